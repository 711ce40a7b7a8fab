"""`maskdpo demo factuality --quick` end to end, as a user runs it (the real oracle server on loopback,
the real client, sampler, annotator, pipeline training and evaluation): the files it promises, and
every number of results.json recomputed here from the annotated answers and judged facts, by the
paper's definitions -- not that Mask-DPO wins (that is the benchmark's to measure)."""

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch

from maskdpo.demos.factuality.run import ORACLE

MODELS = ("base", "dpo", "mask_dpo")


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_quick_demo_writes_its_results_from_the_annotated_answers(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "maskdpo.cli", "demo", "factuality", "--output", str(out),
                             "--quick", "--seed", "3"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TRITON_INTERPRET": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "oracle annotator at http://127.0.0.1:" in result.stdout
    results = json.loads((out / "results.json").read_text())
    test_topics = {json.loads(line)["topic"] for line in (out / "world" / "test_questions.jsonl").read_text().splitlines()}
    train_topics = {json.loads(line)["topic"] for line in (out / "world" / "train_questions.jsonl").read_text().splitlines()}
    assert (results["seed"], results["train_topics"], results["test_topics"]) == (3, len(train_topics), len(test_topics))
    assert not test_topics & train_topics
    test_ids = [json.loads(line)["question_id"] for line in (out / "world" / "test_questions.jsonl").read_text().splitlines()]
    assert results["questions_per_topic"] * len(test_topics) == len(test_ids)
    pairs = read(out / "train" / "pairs.jsonl")
    train_ids = {json.loads(line)["question_id"] for line in (out / "world" / "train_questions.jsonl").read_text().splitlines()}
    assert pairs and {p["question_id"] for p in pairs} <= train_ids  # trained on train topics only
    assert (out / "training.png").stat().st_size > 0 and (out / "results.md").exists()
    for name in MODELS:
        annotated = read(out / name / "annotated.jsonl")
        assert {r["topic"] for r in annotated} == test_topics and all(r["annotator"]["model"] == ORACLE for r in annotated)
        assert sorted(r["question_id"] for r in annotated) == sorted(test_ids)  # one greedy answer per test question
        # each model answered for itself: the base, or its own training run's export
        answered_by = {json.loads(line)["sampling"]["model"] for line in (out / name / "samples.jsonl").read_text().splitlines()}
        assert answered_by == {str(out / "base" / "model" if name == "base" else out / name / "run" / "hf")}
        labels = [s["label"] for r in annotated for s in r["sentences"]]
        correct = sum(label in ("ok", "nofact") for label in labels)  # the paper counts nofact correct
        r = results["models"][name]
        assert (r["correct"], r["incorrect"], r["sentences"]) == (correct, len(labels) - correct, len(labels))
        assert r["anah_score"] == pytest.approx(100 * correct / len(labels))
        assert r["sentences_per_response"] == pytest.approx(len(labels) / len(annotated))
        # FactScore: per response with facts, the supported fraction; the mean over those responses
        judged_file = out / name / "factscore" / "judged.jsonl"
        supported = defaultdict(list)
        for j in read(judged_file) if judged_file.exists() else []:
            supported[j["question_id"], j["sample_id"]].append(j["supported"])
        expected = 100 * sum(sum(v) / len(v) for v in supported.values()) / len(supported) if supported else None
        assert r["factscore"] == pytest.approx(expected) if expected is not None else r["factscore"] is None
        assert r["factscore_responses"] == len(supported)
    # both runs really trained: their weights moved away from the base's, and not alike
    from safetensors.torch import load_file

    def weights(folder):
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}

    base, dpo, mask = (weights(d) for d in (out / "base" / "model", out / "dpo" / "run" / "hf", out / "mask_dpo" / "run" / "hf"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dpo[name], base[name]) and not torch.equal(mask[name], base[name])
    assert not torch.equal(dpo[name], mask[name])
    # a rerun into the same directory finds every step done and writes the same results
    exports = {n: (out / n / "run" / "hf" / "generation_config.json").stat().st_mtime_ns for n in ("dpo", "mask_dpo")}
    again = subprocess.run([sys.executable, "-m", "maskdpo.cli", "demo", "factuality", "--output", str(out),
                            "--quick", "--seed", "3"], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "TRITON_INTERPRET": "0"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert exports == {n: (out / n / "run" / "hf" / "generation_config.json").stat().st_mtime_ns
                       for n in ("dpo", "mask_dpo")}  # no training run started again
    assert json.loads((out / "results.json").read_text()) == results
    # the two preference runs started from the same base on the same pairs, and differ in the mask only
    configs = {name: (out / name / "run" / "config.yaml").read_text() for name in ("dpo", "mask_dpo")}
    assert "mask: none" in configs["dpo"] and "mask: sentences" in configs["mask_dpo"]
    assert configs["dpo"].replace("mask: none", "").replace(str(out / "dpo"), "X") == \
        configs["mask_dpo"].replace("mask: sentences", "").replace(str(out / "mask_dpo"), "X")


@pytest.mark.slow
def test_another_seed_into_the_same_directory_is_refused(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "demo.json").write_text(json.dumps({"seed": 1, "quick": True, "oracle": ORACLE}) + "\n")
    result = subprocess.run([sys.executable, "-m", "maskdpo.cli", "demo", "factuality", "--output", str(tmp_path / "demo"),
                             "--quick", "--seed", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert (f'holds a demo run with {{"seed": 1, "quick": true, "oracle": "{ORACLE}"}}, not '
            f'{{"seed": 2, "quick": true, "oracle": "{ORACLE}"}}') in result.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["demo.json"]
