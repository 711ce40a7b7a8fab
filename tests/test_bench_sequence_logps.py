"""The kernel benchmark: its providers compute the same thing, and it refuses to run without CUDA."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sequence_logps as bench  # noqa: E402


def test_workload_has_prompt_rows_and_sentence_masks():
    logits, labels, weights, seq_ids, num_seqs = bench.make_inputs(2048 + 100, 64, peaked=True, device="cpu")
    assert num_seqs == 3 and seq_ids.max() == 2
    prompt = labels == bench.IGNORE_INDEX
    assert abs(prompt.float().mean().item() - 0.3) < 0.01
    assert torch.all(weights[prompt] == 0)
    kept = weights[~prompt].mean().item()
    assert 0.3 < kept < 0.7  # about half of the response masked, in whole sentences
    runs = (weights[~prompt][1:] != weights[~prompt][:-1]).sum().item()
    assert runs < (~prompt).sum().item() / 8  # sentence runs of >= 8 rows, not row-by-row noise
    p_label = torch.softmax(logits[~prompt].float(), -1).gather(1, labels[~prompt][:, None])
    assert p_label.min() > 0.99


def test_providers_agree_on_cpu():
    inputs = bench.make_inputs(300, 97, peaked=False, device="cpu", seed=1)
    logits, labels, weights, seq_ids, num_seqs = inputs
    results = {}
    for name, (fn, _) in bench.providers(include_compiled=False).items():
        x = logits.clone().requires_grad_(True)
        out = bench.run_provider(fn, x, labels, weights, seq_ids, num_seqs, torch.ones(num_seqs))
        results[name] = (out.detach(), x.grad.float())
    assert {"maskdpo", "maskdpo-inplace", "eager"} <= set(results)
    expected_out, expected_grad = results.pop("eager")
    # Liger returns per-token losses in bf16: each term of the sum may be off by a bf16 unit.
    keep = labels != bench.IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), -1).gather(1, torch.where(keep, labels, 0)[:, None]).squeeze(1)
    bf16_terms = 2 ** -7 * (weights * logp.abs() * keep).sum().item()
    for name, (out, grad) in results.items():
        atol = bf16_terms if name == "liger" else 1e-3
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=atol, msg=name)
        torch.testing.assert_close(grad, expected_grad, rtol=2 ** -7, atol=1e-4, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sequence_logps.py"), "--n", "128"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "CUDA is not available" in run.stderr
