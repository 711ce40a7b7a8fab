"""The hidden-state benchmark: every provider, the peers included, gives the float64 eager loss and
gradients on CPU (so the timed glue is right), and the script needs CUDA to time anything."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_linear_sequence_logps as bench  # noqa: E402


def test_providers_agree_with_float64_on_cpu():
    # 4 sequences of 75 tokens: 2 pairs; Liger without torch.compile and CCE's torch.compile
    # fallback, since their GPU paths do not run under the Triton interpreter.
    inputs = bench.make_inputs(300, 32, 97, "cpu", dtype=torch.float32, seed=1, seq_len=75)
    table = bench.providers(compiled=False, cce_impl="torch_compile")
    assert {"maskdpo-fused", "linear+kernel", "eager", "liger-flce", "liger-dpo", "cce"} <= set(table)
    h64, w64 = (x.double().requires_grad_(True) for x in inputs[:2])
    expected = bench.step(table["eager"], h64, w64, inputs)
    assert torch.isfinite(expected) and h64.grad.abs().max() > 0  # a loss with a gradient to compare
    for name, provider in table.items():
        h, w = bench.leaves(inputs)
        loss = bench.step(provider, h, w, inputs)
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_inputs_are_whole_pairs():
    with pytest.raises(ValueError, match="multiple of 2 \\* seq_len"):
        bench.make_inputs(300, 8, 11, "cpu", seq_len=100)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_linear_sequence_logps.py")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA is not available" in run.stderr
