"""The training benchmark: its workload and eager baseline are right, and it needs CUDA."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train  # noqa: E402

from maskdpo.kernels import reference  # noqa: E402


def test_synthetic_micro_batch_and_eager_baseline():
    mb = bench_train.synthetic_micro_batch(pairs=2, seq=64, vocab=50, seed=0)
    assert mb.input_ids.shape == (256,) and mb.cu_seqlens.tolist() == [0, 64, 128, 192, 256, 256]
    counted = mb.seq_ids >= 0
    assert np.all(mb.labels[counted] == mb.input_ids[1:][counted[:-1]])  # labels are the next tokens
    assert 0.2 < mb.weights[counted].mean() < 0.8 and np.all(mb.weights[~counted] == 0)
    logits = torch.randn(256, 50, dtype=torch.float64)
    args = (torch.from_numpy(mb.labels), torch.from_numpy(mb.weights).double(), torch.from_numpy(mb.seq_ids), 4)
    torch.testing.assert_close(bench_train.eager_sequence_logps(logits, *args).double(),
                               reference.sequence_logps(logits, *args), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA is not available" in run.stderr
