"""The kernel benchmark: its providers compute the same thing, and it refuses to run without CUDA."""

import importlib
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


@pytest.mark.slow  # compiles the torch.compile provider and Liger's kernels: about 25 s
def test_providers_agree_on_cpu():
    inputs = bench.make_inputs(300, 97, peaked=False, device="cpu", seed=1)
    logits, labels, weights, seq_ids, num_seqs = inputs
    results = {}
    for name, (fn, _) in bench.providers(include_compiled=False).items():
        x = logits.clone().requires_grad_(True)
        out = bench.run_provider(fn, x, labels, weights, seq_ids, num_seqs, torch.ones(num_seqs))
        results[name] = (out.detach(), x.grad.float())
    assert {"maskdpo", "maskdpo-inplace", "eager"} <= set(results)
    # one provider per launch variant of the kernel, once the kernel module lists them
    kernel_module = importlib.import_module("maskdpo.kernels.sequence_logps")
    assert {f"maskdpo[{v}]" for v in getattr(kernel_module, "VARIANTS", {})} <= set(results)
    expected_out, expected_grad = results.pop("eager")
    # Liger returns per-token losses in bf16: each term of the sum may be off by a bf16 unit.
    keep = labels != bench.IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), -1).gather(1, torch.where(keep, labels, 0)[:, None]).squeeze(1)
    bf16_terms = 2 ** -7 * (weights * logp.abs() * keep).sum().item()
    for name, (out, grad) in results.items():
        atol = bf16_terms if name == "liger" else 1e-3
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=atol, msg=name)
        torch.testing.assert_close(grad, expected_grad, rtol=2 ** -7, atol=1e-4, msg=name)


def test_floors_count_three_passes_and_the_bytes_a_row_skipping_kernel_moves():
    n, n_active, vocab, bandwidth = 8192, 2900, 128256, 3.0e12  # bytes/s
    three_pass = 3 * 8192 * 128256 * 2
    moved = 2900 * 128256 * 2 + (2900 * 128256 * 2 + 8192 * 128256 * 2)  # fwd reads active; bwd reads active, writes all
    assert bench.traffic_bytes(n, n_active, vocab, 2) == {"three_pass": three_pass, "moved": moved}

    cols = bench.floor_columns(n, n_active, vocab, 2, bandwidth, fwd_bwd_ms=2.0)
    assert cols["active_rows"] == 2900
    assert cols["floor_3pass_ms"] == pytest.approx(three_pass / 3.0e12 * 1e3)
    assert cols["floor_moved_ms"] == pytest.approx(moved / 3.0e12 * 1e3)
    assert cols["fraction_of_3pass_floor"] == pytest.approx(three_pass / 3.0e12 * 1e3 / 2.0)
    assert cols["fraction_of_moved_floor"] == pytest.approx(moved / 3.0e12 * 1e3 / 2.0)
    assert cols["bandwidth_gbs"] == pytest.approx(three_pass / 2.0e-3 / 1e9)

    # A kernel that moves exactly the bytes it must, at the copy bandwidth: the moved-bytes column is
    # 1, while the 3-pass column, which counts rows it never reads, exceeds 1.
    at_floor = bench.floor_columns(n, n_active, vocab, 2, bandwidth, fwd_bwd_ms=moved / bandwidth * 1e3)
    assert at_floor["fraction_of_moved_floor"] == pytest.approx(1.0)
    assert at_floor["fraction_of_3pass_floor"] == pytest.approx(three_pass / moved) and three_pass / moved > 1
    # every row contributing: the two floors are the same
    assert bench.traffic_bytes(n, n, vocab, 4) == {"three_pass": 3 * n * vocab * 4, "moved": 3 * n * vocab * 4}


def test_markdown_reports_both_floors_and_errors():
    env = {"gpu": "GPU", "date": "d", "commit": "c", "driver": "1", "cuda": "13", "torch": "2.13", "triton": "3.9",
           "liger_kernel": "0.8.5"}
    ok = {"n": 8192, "logits": "flat", "provider": "maskdpo[b4096w8]", "fwd_ms": 1.0, "fwd_bwd_ms": 2.5,
          **bench.floor_columns(8192, 2900, 128256, 2, 3.0e12, 2.5), "extra_peak_nv": 1.0, "extra_beyond_grad_nv": 0.0}
    failed = {"n": 8192, "logits": "flat", "provider": "eager", "active_rows": 2900, "error": "out of memory"}
    table = bench.markdown(env, 3.0e12, [ok, failed])
    assert "| of 3-pass floor | of moved-bytes floor |" in table
    three = 3 * 8192 * 128256 * 2 / 3.0e12 * 1e3 / 2.5
    moved = (2 * 2900 + 8192) * 128256 * 2 / 3.0e12 * 1e3 / 2.5
    gbs = 3 * 8192 * 128256 * 2 / 2.5e-3 / 1e9
    assert (f"| 8192 | 2900 | flat | maskdpo[b4096w8] | 1.000 | 2.500 | {gbs:.0f} | {three:.2f} | {moved:.2f} | 1.00 | 0.00 |"
            in table)
    assert "| 8192 | 2900 | flat | eager | out of memory |" in table


def test_providers_are_selected_by_name():
    table = {"maskdpo": 1, "maskdpo[a]": 2, "eager": 3}
    assert bench.select(table, None, None) == table
    assert list(bench.select(table, ["eager", "maskdpo[a]"], None)) == ["maskdpo[a]", "eager"]
    errors = []
    bench.select(table, ["maskdpo[zz]", "eager"], errors.append)
    assert errors == ["unknown or unavailable providers ['maskdpo[zz]']; available: ['eager', 'maskdpo', 'maskdpo[a]']"]


@pytest.mark.slow  # a subprocess that imports torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sequence_logps.py"), "--n", "128"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "CUDA is not available" in run.stderr
