"""Benchmark the hidden-state level: the Mask-DPO loss from hidden states and the LM head.

Every provider computes the same thing on the same inputs: per-sequence masked log-probs of the
label tokens under logits = hidden @ W.T, then the sigmoid DPO loss (beta 0.1) of the pairs, with
precomputed reference log-probs of 0; forward and backward with respect to hidden and W.
  maskdpo-fused  maskdpo.kernels.linear_sequence_logps (compaction, chunked, never all logits), with
                 the contributing rows found beforehand, as the pipeline's data loader does
  maskdpo-fused-sync  the same, finding them itself (one host sync)
  linear+kernel  F.linear, then maskdpo.kernels.sequence_logps (full logits, fused kernel)
  eager          F.linear, then fp32 log_softmax + gather + weighted per-sequence sum
  liger-flce     Liger's fused linear cross entropy, reduction="none", then the weighting and the
                 per-sequence sum (zero-weight tokens passed as ignore_index)
  liger-dpo      Liger's LigerFusedLinearDPOLoss (torch.compile'd unless --no-compile), binary masks
                 as ignore_index, use_ref_model=False (it cannot take precomputed reference log-probs;
                 without a reference model it does the same policy work as the others)
  cce            Cut Cross-Entropy (apple/ml-cross-entropy, `cut-cross-entropy`), reduction="none",
                 then the same glue as liger-flce; its default gradient filtering (filter_eps="high",
                 skips gradient blocks below ~2.4e-4 in bf16: approximate) is left on, as its users run it
  cce-exact      the same with filter_eps=None (exact gradients)
The per-sequence providers feed maskdpo.dpo.loss.mask_dpo_loss; the glue and the loss are timed.

Workload (the issue's): bf16, H = 4096, V = 128256, N in {4096, 16384, 32768}, sequences of 1024
tokens, the first half of the sequences chosen and the second half rejected (Liger's layout), each
token kept (weight 1) with probability 1/2.

Also timed, as the issue's yardstick: "F.linear bwd", the two cuBLAS matmuls of F.linear's backward
on all N tokens (grad_hidden = G @ W and grad_W = G.T @ hidden for a bf16 logits gradient G:
4 * N * H * V flops). It is not a floor: providers that skip zero-weight tokens do 8 * N_kept * H * V
(ours, recomputing the logits) or less.

Reported per (N, provider): median forward+backward time (CUDA events, providers interleaved), the
ratios to liger-dpo and to F.linear bwd, extra peak memory (the peak during the step minus the inputs
and the gradients it must return), and TFLOP/s on the tokens that count (6 * N_kept * H * V flops).
Results go to benchmarks/results/<date>-<gpu>/linear_sequence_logps.{json,md}.
Usage: python benchmarks/bench_linear_sequence_logps.py [--n 4096 16384 32768] [--reps 10]
Exits with status 2 without CUDA.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    cuda_missing,
    environment,
    free_memory,
    interleaved_times,
    one_at_a_time,
    results_dir,
)
from bench_sequence_logps import IGNORE_INDEX, _timed, sum_token_losses  # noqa: E402

BETA = 0.1


def make_inputs(n: int, hidden_size: int, vocab: int, device, dtype=torch.bfloat16, seed: int = 0,
                seq_len: int = 1024):
    """(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows): n // seq_len sequences, an even
    number; active_rows are the contributing rows (what the pipeline's data loader passes)."""
    if n % (2 * seq_len):
        raise ValueError(f"n ({n}) must be a multiple of 2 * seq_len ({2 * seq_len}): whole pairs of sequences")
    gen = torch.Generator(device).manual_seed(seed)
    hidden = torch.randn(n, hidden_size, device=device, dtype=dtype, generator=gen)
    weight = (torch.randn(vocab, hidden_size, device=device, dtype=dtype, generator=gen) / hidden_size ** 0.5)
    labels = torch.randint(0, vocab, (n,), device=device, generator=gen)
    weights = (torch.rand(n, device=device, generator=gen) < 0.5).float()  # half the tokens count
    seq_ids = torch.arange(n, device=device) // seq_len
    from maskdpo.kernels import contributing_rows

    active_rows = contributing_rows(labels, weights, seq_ids, n // seq_len, IGNORE_INDEX)
    return hidden, weight, labels, weights, seq_ids, n // seq_len, active_rows


def dpo_loss(seq_logps: torch.Tensor) -> torch.Tensor:
    """Sigmoid DPO loss of pairs (seq i, seq i + P), reference log-probs 0."""
    from maskdpo.dpo.loss import mask_dpo_loss

    chosen, rejected = seq_logps.chunk(2)
    zeros = torch.zeros_like(chosen)
    return mask_dpo_loss(chosen, rejected, zeros, zeros, beta=BETA)[0]


def eager(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows):
    logits = F.linear(hidden, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or float64 as a reference
    logp = torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    return torch.zeros(num_seqs, device=hidden.device, dtype=logp.dtype).index_add(0, seq_ids, weights * logp)


def linear_then_kernel(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows):
    from maskdpo.kernels import sequence_logps

    return sequence_logps(F.linear(hidden, weight), labels, weights, seq_ids, num_seqs, inplace_backward=True)


def fused(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows, given_rows: bool = True):
    from maskdpo.kernels import linear_sequence_logps

    return linear_sequence_logps(hidden, weight, labels, weights, seq_ids, num_seqs,
                                 active_rows=active_rows if given_rows else None)


def liger_flce(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    target = torch.where(weights > 0, labels, IGNORE_INDEX)
    loss = liger_fused_linear_cross_entropy(hidden, weight, target, reduction="none", ignore_index=IGNORE_INDEX)
    return sum_token_losses(loss, weights, seq_ids, num_seqs)


def cce(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows, impl: str = "cce",
        filter_eps: float | str | None = "high"):
    """impl: "cce" (its Triton kernels, CUDA only) or "torch_compile" (its fallback, runs on CPU,
    which has no gradient filter)."""
    from cut_cross_entropy import linear_cross_entropy

    target = torch.where(weights > 0, labels, IGNORE_INDEX)
    kwargs = {"filter_eps": filter_eps} if impl == "cce" else {}
    loss = linear_cross_entropy(hidden, weight, target, ignore_index=IGNORE_INDEX, reduction="none", impl=impl,
                                **kwargs)
    return sum_token_losses(loss, weights, seq_ids, num_seqs)


def liger_dpo(hidden, weight, labels, weights, seq_ids, num_seqs, active_rows, compiled: bool = True):
    """Liger's whole fused linear DPO loss; sequences are contiguous rows of equal length."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    target = torch.where(weights > 0, labels, IGNORE_INDEX).view(num_seqs, -1)
    loss_fn = LigerFusedLinearDPOLoss(beta=BETA, use_ref_model=False, compiled=compiled)
    return loss_fn(weight, hidden.view(num_seqs, -1, hidden.shape[-1]), target)[0]


def providers(compiled: bool = True, cce_impl: str = "cce") -> dict:
    """name -> (function, whether it returns the loss itself rather than per-sequence log-probs).
    Peers that are not installed are skipped, with a line on stderr."""
    table = {"maskdpo-fused": (fused, False), "maskdpo-fused-sync": (functools.partial(fused, given_rows=False), False),
             "linear+kernel": (linear_then_kernel, False), "eager": (eager, False)}
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        print("liger-kernel is not installed (pip install -e .[bench]): skipping it", file=sys.stderr)
    else:
        table["liger-flce"] = (liger_flce, False)
        table["liger-dpo"] = (functools.partial(liger_dpo, compiled=compiled), True)
    try:
        import cut_cross_entropy  # noqa: F401
    except ImportError:
        print("cut-cross-entropy is not installed (pip install -e .[bench]): skipping it", file=sys.stderr)
    else:
        table["cce"] = (functools.partial(cce, impl=cce_impl), False)
        table["cce-exact"] = (functools.partial(cce, impl=cce_impl, filter_eps=None), False)
    return table


def leaves(inputs):
    """Fresh leaf copies of hidden and W for one step (made before any clock starts)."""
    return inputs[0].clone().requires_grad_(True), inputs[1].clone().requires_grad_(True)


def step(provider, h, w, inputs) -> torch.Tensor:
    """Forward and backward of the DPO loss through one provider; returns the loss."""
    fn, returns_loss = provider
    out = fn(h, w, *inputs[2:])
    loss = out if returns_loss else dpo_loss(out)
    loss.backward()
    return loss


def linear_backward_ms(inputs, reps: int) -> float:
    """Median time of F.linear's backward alone (its two matmuls) on all N tokens."""
    hidden, weight = inputs[0], inputs[1]
    grad_logits = torch.randn(hidden.shape[0], weight.shape[0], device=hidden.device, dtype=hidden.dtype)

    def backward():
        grad_logits @ weight
        grad_logits.t() @ hidden

    for _ in range(2):
        backward()
    return statistics.median(_timed(backward) for _ in range(reps))


def measure(table, inputs, reps: int, warmup: int) -> dict:
    """name -> {"fwd_bwd_ms", "extra_peak_gib"} or {"error"}."""
    def time_one(name):
        h, w = leaves(inputs)  # made before the clock starts, freed on return
        torch.cuda.synchronize()
        return {"fwd_bwd": _timed(lambda: step(table[name], h, w, inputs))}

    def memory_one(name):
        h, w = leaves(inputs)  # freed on return; one_at_a_time frees the cache and resets the peak between names
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(table[name], h, w, inputs)
        torch.cuda.synchronize()
        grads = h.numel() * h.element_size() + w.numel() * w.element_size()
        return (torch.cuda.max_memory_allocated() - before - grads) / 2 ** 30

    times, failed = interleaved_times(table, reps, warmup, time_one)
    memory, failed_memory = one_at_a_time([name for name in table if name not in failed], memory_one)
    failed.update(failed_memory)
    results = {}
    for name in table:
        if name in failed:
            results[name] = {"error": failed[name]}
        else:
            results[name] = {"fwd_bwd_ms": statistics.median(times[name]["fwd_bwd"]), "extra_peak_gib": memory[name]}
    return results


def result_rows(n: int, hidden: int, vocab: int, kept: int, linear_bwd_ms: float, results: dict) -> list[dict]:
    """The rows of one N: the F.linear-backward yardstick, then each provider with its ratios."""
    liger = results.get("liger-dpo", {}).get("fwd_bwd_ms")
    rows = [{"n": n, "provider": "F.linear bwd (all N)", "fwd_bwd_ms": linear_bwd_ms, "vs_linear_bwd": 1.0,
             "extra_peak_gib": None,  # not measured: it is a yardstick of time
             "tflops_on_kept_tokens": 4 * n * hidden * vocab / (linear_bwd_ms * 1e-3) / 1e12}]
    for name, result in results.items():
        row = {"n": n, "hidden": hidden, "vocab": vocab, "kept_tokens": kept, "provider": name, **result}
        if "error" not in result:
            ms = result["fwd_bwd_ms"]
            row.update(vs_liger_dpo=ms / liger if liger else None, vs_linear_bwd=ms / linear_bwd_ms,
                       tflops_on_kept_tokens=6 * kept * hidden * vocab / (ms * 1e-3) / 1e12)
        rows.append(row)
    return rows


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [f"# linear_sequence_logps benchmark (Mask-DPO loss from hidden states), {env['gpu']}", "",
             f"{env['date']}, commit {env['commit']}; driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, "
             f"triton {env['triton']}, liger-kernel {env['liger_kernel']}, cut-cross-entropy {env['cut_cross_entropy']}.",
             "", "Forward+backward of the DPO loss w.r.t. hidden and W; bf16; half the tokens kept. "
             "Extra peak: beyond the inputs and the gradients returned. F.linear bwd: the two matmuls of "
             "F.linear's backward on all N, the issue's yardstick, not a floor (its TFLOP/s: 4 * N * H * V flops).",
             "", "| N | provider | fwd+bwd ms | x liger-dpo | x F.linear bwd | extra peak GiB | TFLOP/s on kept tokens |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['provider']} | {r['error']} | | | | |")
            continue
        vs_liger = f"{r['vs_liger_dpo']:.2f}" if r.get("vs_liger_dpo") else ""
        extra = "" if r["extra_peak_gib"] is None else f"{r['extra_peak_gib']:.2f}"
        lines.append(f"| {r['n']} | {r['provider']} | {r['fwd_bwd_ms']:.2f} | {vs_liger} | {r['vs_linear_bwd']:.2f} | "
                     f"{extra} | {r['tflops_on_kept_tokens']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="run Liger's DPO loss without torch.compile")
    parser.add_argument("--providers", nargs="+", default=None, help="a subset of the providers, by name")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if cuda_missing("GPU kernels"):
        return 2
    env = environment()
    table = providers(compiled=not args.no_compile)
    if args.providers:
        unknown = set(args.providers) - set(table)
        if unknown:
            parser.error(f"unknown or unavailable providers {sorted(unknown)}; available: {sorted(table)}")
        table = {name: table[name] for name in args.providers}
    rows = []
    for n in args.n:
        inputs = make_inputs(n, args.hidden, args.vocab, "cuda")
        kept = int((inputs[3] > 0).sum())
        linear_bwd = linear_backward_ms(inputs, args.reps)
        results = measure(table, inputs, args.reps, args.warmup)
        for row in result_rows(n, args.hidden, args.vocab, kept, linear_bwd, results):
            rows.append(row)
            print(json.dumps(row), flush=True)
        del inputs
        free_memory()
    out_dir = results_dir(env["gpu"], args.out_dir)
    (out_dir / "linear_sequence_logps.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    (out_dir / "linear_sequence_logps.md").write_text(markdown(env, rows))
    print(f"wrote {out_dir}/linear_sequence_logps.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
