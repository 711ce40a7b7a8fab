"""The factuality benchmark's summary: means, spreads and the target order, from per-seed results."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_factuality_demo as bench  # noqa: E402


def run(seed, base, dpo, mask, fs=None):
    models = {name: {"anah_score": score, "factscore": fs, "sentences_per_response": 5.0}
              for name, score in (("base", base), ("dpo", dpo), ("mask_dpo", mask))}
    return {"seed": seed, "seconds": 100.0 + seed, "results": {"models": models},
            "labels": {m: {"ok": 1} for m in bench.MODELS}}


def test_the_summary_holds_mean_spread_and_the_order_on_every_seed():
    summary = bench.summarise([run(0, 40.0, 50.0, 60.0), run(1, 44.0, 46.0, 70.0, fs=20.0)])
    mask = summary["models"]["mask_dpo"]["anah_score"]
    assert (mask["mean"], mask["std"], mask["min"], mask["max"]) == (65.0, 5.0, 60.0, 70.0)
    assert summary["models"]["base"]["factscore"]["mean"] == 20.0  # the seed without FactScore left out
    assert summary["mask_dpo_above_dpo_above_base_on_every_seed"] and summary["mask_dpo_above_dpo_on_every_seed"]
    worse = bench.summarise([run(0, 40.0, 50.0, 60.0), run(1, 50.0, 46.0, 70.0)])  # DPO below base once
    assert not worse["mask_dpo_above_dpo_above_base_on_every_seed"] and worse["mask_dpo_above_dpo_on_every_seed"]
    table = bench.markdown(summary, quick=False)
    assert "| mask_dpo | 65.00 ± 5.00 [60.0, 70.0] | 60.0, 70.0 |" in table
    with pytest.raises(KeyError):
        bench.summarise([{"seed": 0}])


def test_labels_by_exposure_count_each_answer_under_its_person_and_leave_the_opening_out(tmp_path):
    """Hand-built answers for a world's people: the counts are the hand labels, per exposure."""
    import json

    from maskdpo.demos.factuality.world import make_world

    world = make_world(0, topics=6)
    world.write(tmp_path / "world")
    often, never = (next(p for p in world.people if p.exposure == level) for level in (8, 0))

    def answer(person, sentences):
        text, spans = "", []
        for sentence, label in sentences:
            text += ("" if not text else " ")
            spans.append({"start": len(text), "end": len(text) + len(sentence), "label": label})
            text += sentence
        return {"topic": person.name, "response": text, "sentences": spans}

    opening = ("Here is what I know.", "nofact")
    records = {"base": [answer(often, [opening, ("They grew up in X.", "contradictory")]),
                        answer(never, [opening, ("They were born in an unknown year.", "nofact")])],
               "dpo": [answer(often, [opening, ("They grew up in Y.", "ok"), ("They grew up.", "unverifiable")])],
               "mask_dpo": [answer(never, [("Here is what I know about them.", "unverifiable")])]}
    for model, answers in records.items():
        (tmp_path / model).mkdir()
        (tmp_path / model / "annotated.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert bench.labels_by_exposure(*bench.demo_answers(tmp_path)) == {
        "base": {"8": {"contradictory": 1}, "0": {"nofact": 1}},
        "dpo": {"8": {"ok": 1, "unverifiable": 1}},
        "mask_dpo": {"0": {"unverifiable": 1}}}  # not the world's opening: counted
    other = {"base": {}, "dpo": {"8": {"ok": 3}, "0": {"nofact": 1}}, "mask_dpo": {}}  # another seed's
    runs = [{**run(0, 40.0, 50.0, 50.0), "by_exposure": bench.labels_by_exposure(*bench.demo_answers(tmp_path))},
            {**run(1, 40.0, 45.0, 50.0), "by_exposure": other}]
    summary = bench.summarise(runs)
    assert summary["models"]["dpo"]["labels_by_exposure"] == {"8": {"ok": 4, "unverifiable": 1}, "0": {"nofact": 1}}
    assert summary["mask_dpo_at_least_dpo_at_least_base_on_every_seed"]
    assert not summary["mask_dpo_above_dpo_on_every_seed"]  # a tie on seed 0
    assert "| dpo | 4 / 0 / 1 / 0 | 0 / 0 / 0 / 1 |" in bench.markdown(summary, quick=False)


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# The third world's measurements (2026-12-03), the fourth's (2026-12-04) and the fifth's, the
# demo's now (2026-12-06).
COMMITTED = [RESULTS / day / "factuality-world" / seeds for day in ("2026-12-03-cpu", "2026-12-04-cpu", "2026-12-06-cpu")
             for seeds in ("", "seeds-3-5")] + [RESULTS / day / folder for day in ("2026-12-04-cpu", "2026-12-06-cpu")
                                                 for folder in ("factuality-world/seeds-6-8", "factuality-world-quick")]


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda f: "/".join(f.relative_to(RESULTS).parts))
def test_the_committed_summary_is_recomputed_from_the_committed_answers(folder):
    """The committed factuality results: every seed's scores and the by-exposure counts, from the kept
    world and annotated answers (the ANAH score as the paper defines it, nofact counted correct)."""
    import json

    summary = json.loads((folder / "summary.json").read_text())
    runs = []
    for seed, seconds in zip(summary["seeds"], summary["seconds_per_seed"]):
        world, annotated = bench.kept_answers(folder / f"seed-{seed}")
        results = json.loads((folder / f"results-seed-{seed}.json").read_text())
        for model, path in annotated.items():
            labels = [s["label"] for line in path.read_text().splitlines() for s in json.loads(line)["sentences"]]
            correct = sum(label in ("ok", "nofact") for label in labels)
            assert results["models"][model]["anah_score"] == pytest.approx(100 * correct / len(labels))
        runs.append({"seed": seed, "seconds": seconds, "results": results,
                     "labels": {m: bench.label_counts(p) for m, p in annotated.items()},
                     "by_exposure": bench.labels_by_exposure(world, annotated)})
    recomputed = bench.summarise(runs)
    for key, value in recomputed.items():
        assert summary[key] == value, key
