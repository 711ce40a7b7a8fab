"""The training benchmark: its workload is packed the way training packs, and it needs CUDA."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train  # noqa: E402


def test_synthetic_micro_batch_fills_the_budget_with_masked_responses():
    mb = bench_train.synthetic_micro_batch(pairs=2, seq=64, vocab=50, seed=0)
    assert mb.input_ids.shape == (256,) and mb.cu_seqlens.tolist()[:5] == [0, 64, 128, 192, 256]
    assert np.diff(mb.cu_seqlens).max() == 64  # attention's bound is one side
    counted = mb.seq_ids >= 0
    assert np.all(mb.labels[counted] == mb.input_ids[1:][counted[:-1]])  # labels are the next tokens
    assert 0.2 < mb.weights[counted].mean() < 0.8 and np.all(mb.weights[~counted] == 0)
    # 30% prompt: the response targets of each side are the remaining 45 tokens.
    assert mb.response_tokens.tolist() == [45.0] * 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA is not available" in run.stderr
