"""The scaling study's summary (benchmarks/bench_factuality_scaling.py): per arm the mean and spread
over seeds, and the equal-data comparisons (more topics against more questions per topic)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_factuality_scaling as bench  # noqa: E402


def seed_of(scores: dict, base: float) -> dict:
    arms = {}
    for arm, share, questions in bench.ARMS:
        topics = round(24 * share)
        arms[arm] = {"topics": topics, "questions_per_topic": questions, "questions": topics * questions,
                     "pairs": 3 * topics * questions, "anah_score": scores[arm], "correct": 10, "incorrect": 5,
                     "sentences_per_response": 5.0, "factscore": None}
    return {"arms": arms, "base_anah": base}


def test_the_summary_compares_arms_at_equal_data_seed_by_seed():
    a = {"topics-1/3": 70.0, "topics-2/3": 72.0, "all": 75.0, "questions-1": 68.0, "questions-2": 73.0}
    b = {"topics-1/3": 60.0, "topics-2/3": 66.0, "all": 70.0, "questions-1": 62.0, "questions-2": 65.0}
    summary = bench.summarise({0: seed_of(a, 60.0), 1: seed_of(b, 55.0)})
    assert summary["arms"]["all"]["anah_score"]["mean"] == 72.5 and summary["arms"]["all"]["anah_score"]["std"] == 2.5
    assert summary["arms"]["topics-1/3"]["questions"]["mean"] == 24 == summary["arms"]["questions-1"]["questions"]["mean"]
    third, two_thirds = summary["equal_data"]
    assert (third["more_topics"], third["more_questions"]) == ("topics-1/3", "questions-1")
    assert third["anah_difference_per_seed"] == [2.0, -2.0] and third["more_topics_higher_on"] == 1
    assert two_thirds["anah_difference_per_seed"] == [-1.0, 1.0] and two_thirds["mean"] == 0.0
    assert summary["arms"]["all"]["factscore"]["mean"] is None  # no FactScore on any seed: none, not zero
    table = bench.markdown(summary)
    assert "| topics-1/3 | 8 | 3 | 24 | 72 | 65.00 ± 5.00 | 70.0, 60.0 |" in table
    assert "topics-1/3 vs questions-1: +2.0, -2.0 (mean +0.00); more topics higher on 1 of 2 seeds" in table


def test_every_equal_data_comparison_is_between_arms_asking_as_many_questions():
    arms = {arm: (share, questions) for arm, share, questions in bench.ARMS}
    for topics_arm, questions_arm in bench.EQUAL_DATA:
        (s1, q1), (s2, q2) = arms[topics_arm], arms[questions_arm]
        assert s1 < s2 and q1 > q2 and s1 * q1 == pytest.approx(s2 * q2)


def test_an_arm_run_with_other_settings_is_refused_before_anything_runs(tmp_path):
    """A demo folder whose first arm was made with another number of topics: run_arms stops naming
    the arm's record, before drawing pairs or training (no base policy is even there)."""
    from maskdpo.demos.factuality.run import ORACLE

    run_dir = tmp_path / "seed-4"
    (run_dir / "world").mkdir(parents=True)
    (run_dir / "demo.json").write_text(json.dumps({"seed": 4, "quick": False, "oracle": ORACLE}))
    questions = [{"question_id": f"q-{t}-{k}", "topic": f"T{t}"} for t in range(6) for k in (1, 2, 3)]
    (run_dir / "world" / "train_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    arm = run_dir / "scaling" / bench.arm_dir("topics-1/3")
    arm.mkdir(parents=True)
    (arm / "arm.json").write_text(json.dumps({"topics": 3, "questions_per_topic": 3, "seed": 4,
                                              "pairs_per_question": 3, "epochs": 3}))
    with pytest.raises(SystemExit, match=r"arm\.json: this arm was run with .*\"topics\": 3.*not .*\"topics\": 2"):
        bench.run_arms(run_dir, 4)
    assert not (arm / "pairs.jsonl").exists()
    with pytest.raises(SystemExit, match="not the full demo of seed 5"):  # another seed's demo
        bench.run_arms(run_dir, 5)


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
COMMITTED = sorted(RESULTS.glob("*/factuality-scaling"))


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda f: "/".join(f.relative_to(RESULTS).parts))
def test_the_committed_scaling_study_is_recomputed_from_the_committed_answers(folder):
    """Every arm's ANAH score from its kept annotated answers (nofact counted correct, as the paper
    does), and the summary from those."""
    summary = json.loads((folder / "scaling.json").read_text())
    per_seed = {}
    for seed, kept in summary["per_seed"].items():
        for arm, r in kept["arms"].items():
            path = folder / f"seed-{seed}" / f"{bench.arm_dir(arm)}.annotated.jsonl"
            labels = [s["label"] for line in path.read_text().splitlines() for s in json.loads(line)["sentences"]]
            correct = sum(label in ("ok", "nofact") for label in labels)
            assert (r["correct"], r["incorrect"]) == (correct, len(labels) - correct)
            assert r["anah_score"] == pytest.approx(100 * correct / len(labels))
        per_seed[int(seed)] = kept
    recomputed = bench.summarise(per_seed)
    for key, value in recomputed.items():
        assert summary[key] == value, key
