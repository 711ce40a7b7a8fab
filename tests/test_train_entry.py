"""`python -m maskdpo.train` through launch/torchrun.sh: 2 CPU processes, 2 pipeline stages, for real."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from model_helpers import FP32_FIRST_LOSS_ATOL, tiny_hf_llama

from maskdpo.dpo.reference_cache import load_tokens, reference_key, save_tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_launch_trains_from_an_hf_checkpoint(tmp_path):
    """launch/torchrun.sh with 2 CPU processes, starting from a Hugging Face checkpoint directory."""
    tiny_hf_llama(tmp_path / "hf", vocab_size=4096)
    # A source labelled bf16 with its own generation config, as published models are; trained in fp32.
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    generation = {"bos_token_id": 0, "eos_token_id": [1, 7], "do_sample": True, "temperature": 0.6, "top_p": 0.9}
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps(generation))
    env = {**os.environ, "PYTHON": sys.executable, "TRITON_INTERPRET": "0"}
    command = ["bash", str(ROOT / "launch" / "torchrun.sh"), "2", "--config",
               str(ROOT / "launch" / "configs" / "tiny-cpu.yaml"), "--model.path", str(tmp_path / "hf"),
               "--logging.run_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"),
               "--train.max_steps", "3"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "reference log-probs: computed" in result.stdout
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=FP32_FIRST_LOSS_ATOL)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "hf"))
    assert model.config.num_hidden_layers == 2
    exported = tmp_path / "run" / "hf"
    assert (exported / "generation_config.json").read_bytes() == (tmp_path / "hf" / "generation_config.json").read_bytes()
    assert model.generation_config.eos_token_id == [1, 7] and model.generation_config.temperature == 0.6
    config = json.loads((exported / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "float32" and config["eos_token_id"] == 1  # the weights' dtype
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert list(tmp_path.joinpath("cache").glob("reference-tokens-*.npz"))


def test_reference_cache_is_keyed_by_model_code_and_versions_and_holds_sides_by_tokens(tmp_path, monkeypatch):
    import numpy as np

    import maskdpo.dpo.reference_cache as cache
    from maskdpo.data.masks import EncodedPair, EncodedSide

    def side(ids, prompt):
        return EncodedSide(ids, [0.0] * prompt + [1.0] * (len(ids) - prompt), prompt, 0, len(ids) - prompt)

    pairs = [EncodedPair("a", side([5, 6, 7, 8], 2), side([5, 6, 9], 2)), EncodedPair("b", side([1, 2, 3], 1),
                                                                                       side([1, 4], 1))]
    tiny_hf_llama(tmp_path / "hf")
    key = reference_key(tmp_path / "hf", extra={"head": "fused"})
    tokens = {0: (np.float32([-1.5, -2.0]), np.float32([-0.5])), 1: (np.float32([-3.0, -1.0]), np.float32([-4.0]))}
    save_tokens(tmp_path / "cache", key, pairs[:1], tokens)
    assert load_tokens(tmp_path / "cache", key, pairs) is None  # pair b's sides are not there yet
    save_tokens(tmp_path / "cache", key, pairs[1:], {0: tokens[1]})  # added to the same file
    loaded = load_tokens(tmp_path / "cache", key, pairs)
    assert all(np.array_equal(loaded[i][s], tokens[i][s]) for i in (0, 1) for s in (0, 1))
    # Sides are found by their tokens, not their place or weights: a reordered subset is served.
    reweighted = [EncodedPair("b2", EncodedSide([1, 2, 3], [0.0, 0.5, 0.0], 1, 0, 1), pairs[1].rejected)]
    assert np.array_equal(load_tokens(tmp_path / "cache", key, reweighted)[0][0], tokens[1][0])
    assert reference_key(tmp_path / "hf", extra={"head": "eager"}) != key
    time.sleep(0.01)
    (tmp_path / "hf" / "model.safetensors").touch()  # new weights written in place
    assert reference_key(tmp_path / "hf", extra={"head": "fused"}) != key
    key = reference_key(tmp_path / "hf", extra={"head": "fused"})
    monkeypatch.setattr(cache, "source_digest", lambda *names: "edited kernels")  # the code changed
    assert reference_key(tmp_path / "hf", extra={"head": "fused"}) != key
    monkeypatch.undo()
    monkeypatch.setattr(cache, "library_versions", lambda: {"torch": "another"})
    assert reference_key(tmp_path / "hf", extra={"head": "fused"}) != key


def test_weighted_sums_of_token_log_probs():
    import numpy as np

    from maskdpo.dpo.reference_cache import weighted_sums

    tokens = {0: (np.float32([-1.0, -2.0, -3.0]), np.float32([-0.5])), 2: (np.float32([-4.0]), np.float32([-1.0, -1.0]))}
    weights = {0: ([1.0, 0.0, 0.5], [1.0]), 2: ([0.0], [0.25, 1.0])}
    table = weighted_sums(tokens, weights, 3)
    assert table[0].tolist() == [-2.5, -0.5] and table[2].tolist() == [0.0, -1.25]
    assert torch.isnan(table[1]).all()
