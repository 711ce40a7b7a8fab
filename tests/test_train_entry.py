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

from maskdpo.reference import load_reference, reference_key, save_reference

from model_helpers import tiny_hf_llama
from test_data_cli import pairs_file  # noqa: F401  (fixture: the bundled pairs as a file)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_launch_trains_and_exports(tmp_path, pairs_file):  # noqa: F811
    tiny_hf_llama(tmp_path / "hf", vocab_size=4096)
    env = {**os.environ, "PYTHON": sys.executable, "TRITON_INTERPRET": "0"}
    command = ["bash", str(ROOT / "launch" / "torchrun.sh"), "2", "--model", str(tmp_path / "hf"),
               "--pairs", str(pairs_file), "--tokenizer", str(ROOT / "maskdpo" / "assets" / "tokenizer"),
               "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--pipeline-stages", "2",
               "--budget", "512", "--max-length", "256", "--gradient-accumulation-steps", "2", "--steps", "3",
               "--lr", "1e-3"]
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
