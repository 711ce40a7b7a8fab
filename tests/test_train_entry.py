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
from model_helpers import tiny_hf_llama

from maskdpo.dpo.reference_cache import load_reference, reference_key, save_reference

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_launch_trains_from_an_hf_checkpoint(tmp_path):
    """launch/torchrun.sh with 2 CPU processes, starting from a Hugging Face checkpoint directory."""
    tiny_hf_llama(tmp_path / "hf", vocab_size=4096)
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
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "hf"))
    assert model.config.num_hidden_layers == 2
    assert list(tmp_path.joinpath("cache").glob("reference-*.pt"))


def test_reference_cache_is_keyed_by_model_data_and_packing(tmp_path):
    tiny_hf_llama(tmp_path / "hf")
    key = reference_key(tmp_path / "hf", "data1", 512, 2, 10)
    table = torch.randn(10, 2)
    save_reference(tmp_path / "cache", key, table)
    assert torch.equal(load_reference(tmp_path / "cache", key), table)
    assert reference_key(tmp_path / "hf", "data2", 512, 2, 10) != key
    assert reference_key(tmp_path / "hf", "data1", 1024, 2, 10) != key
    time.sleep(0.01)
    (tmp_path / "hf" / "model.safetensors").touch()  # new weights written in place
    assert reference_key(tmp_path / "hf", "data1", 512, 2, 10) != key
    assert load_reference(tmp_path / "cache", "missing") is None


def test_reference_cache_key_covers_the_code_the_versions_and_the_head(tmp_path, monkeypatch):
    import maskdpo.dpo.reference_cache as cache

    tiny_hf_llama(tmp_path / "hf")
    key = reference_key(tmp_path / "hf", "data1", 512, 2, 10, extra={"head": "fused"})
    assert reference_key(tmp_path / "hf", "data1", 512, 2, 10, extra={"head": "eager"}) != key
    monkeypatch.setattr(cache, "source_digest", lambda *names: "edited kernels")  # the code changed
    assert reference_key(tmp_path / "hf", "data1", 512, 2, 10, extra={"head": "fused"}) != key
    monkeypatch.undo()
    monkeypatch.setattr(cache, "library_versions", lambda: {"torch": "another"})
    assert reference_key(tmp_path / "hf", "data1", 512, 2, 10, extra={"head": "fused"}) != key
