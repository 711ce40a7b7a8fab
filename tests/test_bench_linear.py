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


@pytest.mark.slow  # compiles peers (torch.compile fallbacks): half a minute
def test_providers_agree_with_float64_on_cpu():
    # 4 sequences of 75 tokens: 2 pairs; Liger without torch.compile and CCE's torch.compile
    # fallback, since their GPU paths do not run under the Triton interpreter.
    inputs = bench.make_inputs(300, 32, 97, "cpu", dtype=torch.float32, seed=1, seq_len=75)
    table = bench.providers(compiled=False, cce_impl="torch_compile")
    assert {"maskdpo-fused", "maskdpo-fused-sync", "linear+kernel", "eager", "liger-flce", "liger-dpo", "cce",
            "cce-exact"} <= set(table)
    h64, w64 = (x.double().requires_grad_(True) for x in inputs[:2])
    expected = bench.step(table["eager"], h64, w64, inputs)
    assert torch.isfinite(expected) and h64.grad.abs().max() > 0  # a loss with a gradient to compare
    for name, provider in table.items():
        h, w = bench.leaves(inputs)
        loss = bench.step(provider, h, w, inputs)
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_result_rows_and_table():
    rows = bench.result_rows(4096, 4096, 128256, 2048, 10.0, {
        "maskdpo-fused": {"fwd_bwd_ms": 5.0, "extra_peak_gib": 0.6},
        "liger-dpo": {"fwd_bwd_ms": 20.0, "extra_peak_gib": 3.0},
        "eager": {"error": "out of memory"}})
    by_name = {r["provider"]: r for r in rows}
    ours = by_name["maskdpo-fused"]
    assert ours["vs_liger_dpo"] == 0.25 and ours["vs_linear_bwd"] == 0.5
    assert abs(ours["tflops_on_kept_tokens"] - 6 * 2048 * 4096 * 128256 / 5e-3 / 1e12) < 1e-9
    assert by_name["F.linear bwd (all N)"]["extra_peak_gib"] is None
    env = {"gpu": "GPU", "date": "d", "commit": "c", "driver": "1", "cuda": "13", "torch": "2.13",
           "triton": "3.9", "liger_kernel": "0.8.5", "cut_cross_entropy": "25.1.1"}
    table = bench.markdown(env, rows)
    assert "| 4096 | maskdpo-fused | 5.00 | 0.25 | 0.50 | 0.60 |" in table
    assert "| 4096 | F.linear bwd (all N) | 10.00 |  | 1.00 |  |" in table
    assert "| 4096 | eager | out of memory |" in table


def test_inputs_are_whole_pairs():
    with pytest.raises(ValueError, match="multiple of 2 \\* seq_len"):
        bench.make_inputs(300, 8, 11, "cpu", seq_len=100)


@pytest.mark.slow  # a subprocess that imports torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_linear_sequence_logps.py")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA is not available" in run.stderr
