"""The hidden-state benchmark: its providers agree on CPU, and it needs CUDA to time anything."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_linear_sequence_logps as bench  # noqa: E402


def test_providers_agree_on_cpu():
    inputs = bench.make_inputs(300, 32, 97, "cpu", dtype=torch.float32, seed=1)
    grad_out = torch.ones(inputs[-1])
    results = {name: bench.run(fn, inputs, grad_out) for name, fn in bench.providers().items()}
    assert {"maskdpo-fused", "linear+kernel", "eager"} <= set(results)
    expected_h, expected_w = results.pop("eager")
    for name, (h, w) in results.items():
        torch.testing.assert_close(h.grad, expected_h.grad, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(w.grad, expected_w.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_linear_sequence_logps.py")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA is not available" in run.stderr
