"""Benchmark the hidden-state level: masked per-sequence log-probs from hidden states and the LM head.

Providers, on the same inputs (bf16, H = 4096, V = 128256, half the tokens with weight 0), forward
and backward with respect to hidden and weight:
  maskdpo-fused      maskdpo.kernels.linear_sequence_logps (compaction, chunked, never all logits)
  linear+kernel      F.linear, then maskdpo.kernels.sequence_logps (full logits, fused kernel)
  eager              F.linear, then fp32 log_softmax + gather + weighted per-sequence sum
  liger-flce         Liger's fused linear cross entropy, reduction="none", then the weighting and
                     the per-sequence sum (zero-weight tokens passed as ignore_index)
Reported: median forward+backward time (CUDA events), extra peak memory, and TFLOP/s achieved on
the tokens that count (6 * N_kept * H * V flops). Results go to
benchmarks/results/<date>-<gpu>/linear_sequence_logps.{json,md}. Exits with status 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cuda_missing, results_dir  # noqa: E402
from bench_sequence_logps import IGNORE_INDEX, _timed, environment  # noqa: E402



def make_inputs(n: int, hidden_size: int, vocab: int, device, dtype=torch.bfloat16, seed: int = 0):
    gen = torch.Generator(device).manual_seed(seed)
    hidden = torch.randn(n, hidden_size, device=device, dtype=dtype, generator=gen)
    weight = (torch.randn(vocab, hidden_size, device=device, dtype=dtype, generator=gen) / hidden_size ** 0.5)
    labels = torch.randint(0, vocab, (n,), device=device, generator=gen)
    weights = (torch.rand(n, device=device, generator=gen) < 0.5).float()  # half the tokens count
    seq_ids = torch.arange(n, device=device) // 1024
    return hidden, weight, labels, weights, seq_ids, (n + 1023) // 1024


def eager(hidden, weight, labels, weights, seq_ids, num_seqs):
    logp = torch.log_softmax(F.linear(hidden, weight).float(), -1).gather(1, labels[:, None]).squeeze(1)
    return torch.zeros(num_seqs, device=hidden.device, dtype=logp.dtype).index_add(0, seq_ids, weights * logp)


def linear_then_kernel(hidden, weight, labels, weights, seq_ids, num_seqs):
    from maskdpo.kernels import sequence_logps

    return sequence_logps(F.linear(hidden, weight), labels, weights, seq_ids, num_seqs, inplace_backward=True)


def fused(hidden, weight, labels, weights, seq_ids, num_seqs):
    from maskdpo.kernels import linear_sequence_logps

    return linear_sequence_logps(hidden, weight, labels, weights, seq_ids, num_seqs)


def liger_flce(hidden, weight, labels, weights, seq_ids, num_seqs):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    target = torch.where(weights > 0, labels, IGNORE_INDEX)
    loss = liger_fused_linear_cross_entropy(hidden, weight, target, reduction="none", ignore_index=IGNORE_INDEX)
    return torch.zeros(num_seqs, device=hidden.device, dtype=torch.float32).index_add(0, seq_ids, -loss.float() * weights)


def providers() -> dict:
    table = {"maskdpo-fused": fused, "linear+kernel": linear_then_kernel, "eager": eager}
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        print("liger-kernel is not installed (pip install -e .[bench]): skipping it", file=sys.stderr)
    else:
        table["liger-flce"] = liger_flce
    return table


def run(fn, inputs, grad_out):
    hidden, weight, labels, weights, seq_ids, num_seqs = inputs
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    fn(h, w, labels, weights, seq_ids, num_seqs).backward(grad_out)
    return h, w


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if cuda_missing("GPU kernels"):
        return 2
    env = environment()
    table = providers()
    rows = []
    for n in args.n:
        inputs = make_inputs(n, args.hidden, args.vocab, "cuda")
        grad_out = torch.ones(inputs[-1], device="cuda")
        kept = int((inputs[3] > 0).sum())
        times = {name: [] for name in table}
        failed = {}
        for rep in range(args.warmup + args.reps):
            order = list(table)
            random.Random(rep).shuffle(order)
            for name in order:
                if name in failed:
                    continue
                try:
                    ms = _timed(lambda: run(table[name], inputs, grad_out))
                except torch.OutOfMemoryError:
                    failed[name] = "out of memory"
                    torch.cuda.empty_cache()
                    continue
                if rep >= args.warmup:
                    times[name].append(ms)
        for name, fn in table.items():
            row = {"n": n, "hidden": args.hidden, "vocab": args.vocab, "kept_tokens": kept, "provider": name}
            if name in failed:
                rows.append({**row, "error": failed[name]})
                continue
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run(fn, inputs, grad_out)
            torch.cuda.synchronize()
            ms = statistics.median(times[name])
            rows.append({**row, "fwd_bwd_ms": ms, "extra_peak_gib": (torch.cuda.max_memory_allocated() - before) / 2 ** 30,
                         "tflops_on_kept_tokens": 6 * kept * args.hidden * args.vocab / (ms * 1e-3) / 1e12})
            print(json.dumps(rows[-1]), flush=True)
        del inputs
        torch.cuda.empty_cache()
    out_dir = results_dir(env["gpu"], args.out_dir)
    (out_dir / "linear_sequence_logps.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = [f"# linear_sequence_logps benchmark, {env['gpu']}", "", json.dumps(env), "",
             "| N | provider | fwd+bwd ms | extra peak GiB | TFLOP/s on kept tokens |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['provider']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['n']} | {r['provider']} | {r['fwd_bwd_ms']:.2f} | {r['extra_peak_gib']:.2f} | "
                         f"{r['tflops_on_kept_tokens']:.0f} |")
    (out_dir / "linear_sequence_logps.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir}/linear_sequence_logps.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
