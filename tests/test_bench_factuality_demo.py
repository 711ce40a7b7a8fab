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
    files = world.write(tmp_path / "world")
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
    assert files["world"].exists()
    assert bench.labels_by_exposure(tmp_path) == {
        "base": {"8": {"contradictory": 1}, "0": {"nofact": 1}},
        "dpo": {"8": {"ok": 1, "unverifiable": 1}},
        "mask_dpo": {"0": {"unverifiable": 1}}}  # not the world's opening: counted
    runs = [{**run(0, 40.0, 50.0, 50.0), "by_exposure": bench.labels_by_exposure(tmp_path)},
            {**run(1, 40.0, 45.0, 50.0), "by_exposure": bench.labels_by_exposure(tmp_path)}]
    summary = bench.summarise(runs)
    assert summary["models"]["dpo"]["labels_by_exposure"] == {"8": {"ok": 2, "unverifiable": 2}}
    assert summary["mask_dpo_at_least_dpo_at_least_base_on_every_seed"]
    assert not summary["mask_dpo_above_dpo_on_every_seed"]  # a tie on seed 0
    assert "| dpo | 2 / 0 / 2 / 0 | 0 / 0 / 0 / 0 |" in bench.markdown(summary, quick=False)
