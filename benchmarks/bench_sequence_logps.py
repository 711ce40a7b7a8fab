"""Benchmark the fused sequence-logps kernel against its peers on one CUDA GPU.

Providers, timed in one process on the same inputs, interleaved within each repetition:
  maskdpo           maskdpo.kernels.sequence_logps (gradient in a new buffer)
  maskdpo-inplace   the same with inplace_backward=True (gradient written over the logits)
  maskdpo[<name>]   the same as maskdpo with each launch variant of the kernel
                    (maskdpo.kernels.sequence_logps.VARIANTS; `maskdpo` is the architecture's default)
  eager             fp32 log_softmax + gather + weighted index_add, eager PyTorch
  compiled          torch.compile of `eager`
  liger             Liger-Kernel cross entropy, reduction="none", then the weighting and the
                    per-sequence sum (the glue is timed as part of it). Its per-token losses come
                    back in the logits dtype, so with bf16 logits every token's log-prob is rounded
                    to bf16 (up to 2^-8 relative) before the sum.

Workload: Llama-3 vocabulary (V = 128256), bf16 logits, sequences of 1024 rows; the first 30% of
each sequence are prompt rows (label ignore_index), the response is cut into sentences of 8-40 rows
and about half of them (whole sentences) get weight 0. Logits are flat (N(0, 1)) or peaked (the
label's logit 20 above the rest on response rows, p(label) ~ 0.999).

Reported per (N, logits kind, provider): median forward and forward+backward time (CUDA events,
warm-up first), extra peak memory during forward+backward (beyond the inputs; also in units of one
N x V bf16 buffer, and beyond the gradient; measured one provider at a time, memory freed between
them), effective bandwidth of the 3-pass traffic, and the fraction of two floors, both at the
device-to-device copy bandwidth measured in the same run:
  3-pass floor       read all logits in the forward, read them and write the gradient in the
                     backward: 3 * N * V * 2 bytes
  moved-bytes floor  what a kernel that never reads a non-contributing row moves: the forward reads
                     the N_active contributing rows, the backward reads them and writes the gradient
                     of all N rows: (2 * N_active + N) * V * 2 bytes (N_active from
                     maskdpo.kernels.contributes). A kernel moving at least this cannot exceed 1.
Results go to benchmarks/results/<date>-<gpu>/sequence_logps.{json,md}.

Usage: python benchmarks/bench_sequence_logps.py [--n 4096 8192 16384 32768] [--reps 20] [--providers ...]
Exits with status 2 on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import sys
from pathlib import Path

import torch
from bench_common import cuda_missing, environment, free_memory, interleaved_times, one_at_a_time, results_dir

from maskdpo.kernels import IGNORE_INDEX, contributes  # noqa: E402 - one definition

SEQ_LEN = 1024
PROMPT_FRACTION = 0.3
PEAK_GAP = 20.0


def make_inputs(n: int, vocab: int, peaked: bool, device, seed: int = 0):
    """Logits (N, V) bf16 and row data shaped like Mask-DPO training rows (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    weights = torch.zeros(n)
    seq_ids = torch.arange(n) // SEQ_LEN
    for start in range(0, n, SEQ_LEN):
        end = min(n, start + SEQ_LEN)
        response = start + int(PROMPT_FRACTION * (end - start))
        labels[start:response] = IGNORE_INDEX
        row = response
        while row < end:
            length = int(torch.randint(8, 41, (1,), generator=gen))
            keep = bool(torch.rand(1, generator=gen) < 0.5)
            weights[row:min(end, row + length)] = float(keep)
            row += length
    logits = torch.randn(n, vocab, device=device, dtype=torch.bfloat16,
                         generator=torch.Generator(device).manual_seed(seed))
    labels, weights, seq_ids = labels.to(device), weights.to(device), seq_ids.to(device)
    if peaked:
        rows = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        logits[rows, labels[rows]] += PEAK_GAP
    num_seqs = (n + SEQ_LEN - 1) // SEQ_LEN
    return logits, labels, weights, seq_ids, num_seqs


def eager(logits, labels, weights, seq_ids, num_seqs):
    """The plain PyTorch way: fp32 log-softmax of every row, gather, weight, sum per sequence."""
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.where(keep, labels, 0)[:, None]).squeeze(1)
    contrib = torch.where(keep, weights * logp, 0.0)
    return torch.zeros(num_seqs, device=logits.device).index_add(0, seq_ids, contrib)


def sum_token_losses(loss, weights, seq_ids, num_seqs):
    """The glue per-token cross-entropy peers need: log-prob = -loss, weighted, summed per sequence."""
    return torch.zeros(num_seqs, device=loss.device, dtype=torch.float32).index_add(0, seq_ids, -loss.float() * weights)


def liger_with_glue(logits, labels, weights, seq_ids, num_seqs):
    from liger_kernel.transformers.functional import liger_cross_entropy

    loss = liger_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    return sum_token_losses(loss, weights, seq_ids, num_seqs)


def kernel_variants() -> list[str]:
    """The kernel's launch variants by name; none before the kernel module defines VARIANTS."""
    return list(getattr(importlib.import_module("maskdpo.kernels.sequence_logps"), "VARIANTS", {}))


def providers(include_compiled: bool = True):
    """name -> (function, whether it overwrites its logits input)."""
    from maskdpo.kernels import sequence_logps

    table = {
        "maskdpo": (lambda *a: sequence_logps(*a, ignore_index=IGNORE_INDEX), False),
        "maskdpo-inplace": (lambda *a: sequence_logps(*a, ignore_index=IGNORE_INDEX, inplace_backward=True), True),
    }
    for variant in kernel_variants():
        table[f"maskdpo[{variant}]"] = (functools.partial(sequence_logps, ignore_index=IGNORE_INDEX, variant=variant), False)
    table["eager"] = (eager, False)
    if include_compiled:
        table["compiled"] = (torch.compile(eager, dynamic=False), False)
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        print("liger-kernel is not installed (pip install -e .[bench]): skipping it", file=sys.stderr)
    else:
        table["liger"] = (liger_with_glue, True)  # Liger writes its gradient into the logits in the forward
    return table


def run_provider(fn, leaf, labels, weights, seq_ids, num_seqs, grad_out=None):
    """Call a provider as a training step would: on a non-leaf view of the logits (as the LM head's
    output is; in-place providers need one), then backward if grad_out is given."""
    out = fn(leaf.view_as(leaf), labels, weights, seq_ids, num_seqs)
    if grad_out is not None:
        out.backward(grad_out)
    return out


def _timed(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def copy_bandwidth(nbytes: int, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (a copy reads and writes nbytes)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ms = statistics.median(_timed(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * nbytes / (ms * 1e-3)


def measure(table, inputs, reps: int, warmup: int):
    logits, labels, weights, seq_ids, num_seqs = inputs
    grad_out = torch.randn(num_seqs, device="cuda")

    def fresh():
        return logits.clone().requires_grad_(True)

    def step(fn, x, backward):
        run_provider(fn, x, labels, weights, seq_ids, num_seqs, grad_out if backward else None)

    def time_kind(fn, backward):
        x = fresh()  # the copy is made before the clock starts, and freed on return
        torch.cuda.synchronize()
        return _timed(lambda: step(fn, x, backward))

    def time_one(name):
        return {kind: time_kind(table[name][0], backward) for kind, backward in (("fwd", False), ("fwd_bwd", True))}

    times, failed = interleaved_times(table, reps, warmup, time_one)
    row_bytes = logits.shape[0] * logits.shape[1] * logits.element_size()

    def memory_one(name):
        x = fresh()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        step(table[name][0], x, True)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        grad_is_new = x.grad is not None and x.grad.data_ptr() != x.data_ptr()
        return {"extra_peak_bytes": extra, "extra_peak_nv": extra / row_bytes,
                "extra_beyond_grad_nv": (extra - (row_bytes if grad_is_new else 0)) / row_bytes}

    memory, failed_memory = one_at_a_time([name for name in table if name not in failed], memory_one)
    failed.update(failed_memory)
    results = {}
    for name, (_, overwrites) in table.items():
        if name in failed:
            results[name] = {"error": failed[name]}
            continue
        results[name] = {"fwd_ms": statistics.median(times[name]["fwd"]),
                         "fwd_bwd_ms": statistics.median(times[name]["fwd_bwd"]),
                         **memory[name], "overwrites_logits": overwrites}
    return results


def traffic_bytes(n: int, n_active: int, vocab: int, element_size: int) -> dict:
    """Bytes a forward+backward must move at least. three_pass: every row read in the forward, read
    again and its gradient written in the backward. moved: a kernel that never reads a row that does
    not contribute: the N_active contributing rows read twice, the gradient of all N rows written."""
    row = vocab * element_size
    return {"three_pass": 3 * n * row, "moved": (2 * n_active + n) * row}


def floor_columns(n: int, n_active: int, vocab: int, element_size: int, bandwidth: float, fwd_bwd_ms: float) -> dict:
    """Both floors (ms at `bandwidth` bytes/s) and the fraction of each that a measured
    forward+backward reaches, with the effective bandwidth of the 3-pass traffic."""
    traffic = traffic_bytes(n, n_active, vocab, element_size)
    floor_3pass_ms = traffic["three_pass"] / bandwidth * 1e3
    floor_moved_ms = traffic["moved"] / bandwidth * 1e3
    return {"active_rows": n_active, "bandwidth_gbs": traffic["three_pass"] / (fwd_bwd_ms * 1e-3) / 1e9,
            "floor_3pass_ms": floor_3pass_ms, "floor_moved_ms": floor_moved_ms,
            "fraction_of_3pass_floor": floor_3pass_ms / fwd_bwd_ms, "fraction_of_moved_floor": floor_moved_ms / fwd_bwd_ms}


def select(table: dict, names, error) -> dict:
    """The providers named (all when names is None), in the table's order; error(message) on a name
    that is not there."""
    if names is None:
        return table
    unknown = sorted(set(names) - set(table))
    if unknown:
        error(f"unknown or unavailable providers {unknown}; available: {sorted(table)}")
    return {name: fn for name, fn in table.items() if name in names}


def markdown(env: dict, bandwidth: float, rows: list[dict]) -> str:
    lines = [
        f"# sequence_logps benchmark, {env['gpu']}",
        "",
        f"{env['date']}, commit {env['commit']}; driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, "
        f"triton {env['triton']}, liger-kernel {env['liger_kernel']}. Copy bandwidth {bandwidth / 1e12:.2f} TB/s.",
        "",
        "Floors at that bandwidth: 3-pass = 3 N V 2 bytes; moved bytes = (2 N_active + N) V 2 bytes, what a kernel "
        "that never reads a non-contributing row moves (N_active: rows that contribute).",
        "",
        "| N | N_active | logits | provider | fwd ms | fwd+bwd ms | GB/s (3-pass) | of 3-pass floor | of moved-bytes floor "
        "| extra peak (x NxV) | beyond grad (x NxV) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r.get('active_rows', '')} | {r['logits']} | {r['provider']} | {r['error']} "
                         "| | | | | | |")
            continue
        lines.append(
            f"| {r['n']} | {r['active_rows']} | {r['logits']} | {r['provider']} | {r['fwd_ms']:.3f} | "
            f"{r['fwd_bwd_ms']:.3f} | {r['bandwidth_gbs']:.0f} | {r['fraction_of_3pass_floor']:.2f} | "
            f"{r['fraction_of_moved_floor']:.2f} | {r['extra_peak_nv']:.2f} | {r['extra_beyond_grad_nv']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 8192, 16384, 32768], help="rows (tokens)")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama-3: 128256)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per provider")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    parser.add_argument("--providers", nargs="+", default=None,
                        help="a subset of the providers, by name (a launch variant: maskdpo[<variant>])")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: results/<date>-<gpu>/")
    args = parser.parse_args(argv)

    if cuda_missing("GPU kernels"):
        return 2

    env = environment()
    table = select(providers(include_compiled=not args.no_compile), args.providers, parser.error)
    bandwidth = copy_bandwidth(max(args.n) * args.vocab * 2)
    rows = []
    for n in args.n:
        for peaked in (False, True):
            inputs = make_inputs(n, args.vocab, peaked, "cuda")
            n_active = int(contributes(*inputs[1:]).sum())
            for name, result in measure(table, inputs, args.reps, args.warmup).items():
                row = {"n": n, "vocab": args.vocab, "logits": "peaked" if peaked else "flat", "provider": name,
                       "active_rows": n_active, **result}
                if "error" not in result:
                    row.update(floor_columns(n, n_active, args.vocab, inputs[0].element_size(), bandwidth,
                                             result["fwd_bwd_ms"]))
                rows.append(row)
                print(json.dumps(row), flush=True)
            del inputs
            free_memory()

    out_dir = results_dir(env["gpu"], args.out_dir)
    report = {"environment": env, "copy_bandwidth_bytes_per_s": bandwidth, "rows": rows}
    (out_dir / "sequence_logps.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "sequence_logps.md").write_text(markdown(env, bandwidth, rows))
    print(f"wrote {out_dir}/sequence_logps.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
