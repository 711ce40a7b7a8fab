"""Benchmark Mask-DPO training throughput on one CUDA GPU: tokens/s and MFU.

The real stack: PipelineTrainer (DeepSpeed, PP=1, DP=1, ZeRO-1, bf16 with fp32 accumulation,
AdamW), randomly initialised Llama-3.2 shapes (1B, 3B), packed micro-batches of sequences of
`--seq` tokens (chosen and rejected of `--pairs` pairs), 30% prompt tokens, about half of each
response masked in sentence runs, reference log-probs given. The three last-stage heads of the
public configuration (`model.head`, PipelineTrainer(head=...)) on the same model:

  fused     hidden states -> linear_sequence_logps: chunks of logits, never the whole (the default)
  kernel    full logits -> the sequence_logps Triton kernel (gradient written over the logits)
  eager     full logits -> fp32 log_softmax + gather + weighted per-sequence sum in plain PyTorch

Reported: median step time over --steps steps after --warmup, tokens/s per GPU, MFU (flop count in
maskdpo/flops.py over the device's dense bf16 peak), peak memory. Each head starts from nothing:
the previous trainer's engine is destroyed, its process group torn down, the CUDA cache emptied and
the peak count reset before the next one is built. Results go to
benchmarks/results/<date>-<gpu>/train.{json,md}. Exits with status 2 on a machine without CUDA.

Usage: python benchmarks/bench_train.py [--shapes llama3.2-1b] [--heads fused eager] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import cuda_missing, environment, free_memory, results_dir

from maskdpo.dpo.objective import HEADS
from maskdpo.train.distributed import destroy_distributed
from maskdpo.train.launcher import free_port

SHAPES = {  # Llama-3.2 shapes (tied embeddings, Llama-3.1 rope scaling)
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8),
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                        num_key_value_heads=8),
}
ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}


def synthetic_pairs(pairs: int, seq: int, vocab: int, seed: int):
    """`pairs` encoded pairs whose sides are `seq` tokens: 30% prompt, then sentence-like runs of
    8-40 tokens, each kept (weight 1) or masked (0) with probability 1/2."""
    from maskdpo.data.masks import EncodedPair, EncodedSide

    rng = np.random.default_rng(seed)
    prompt = int(0.3 * seq)

    def side():
        weights = [0.0] * prompt
        while len(weights) < seq:
            weights += [float(rng.random() < 0.5)] * int(rng.integers(8, 41))
        weights = weights[:seq]
        return EncodedSide(rng.integers(0, vocab, seq).tolist(), weights, prompt, 0, int(sum(weights)))

    return [EncodedPair(f"synthetic-{seed}-{p}", side(), side()) for p in range(pairs)]


def synthetic_micro_batch(pairs: int, seq: int, vocab: int, seed: int):
    """One micro-batch of exactly 2 * pairs * seq tokens, packed the way training packs."""
    from maskdpo.data import pack_pairs

    packing = pack_pairs(synthetic_pairs(pairs, seq, vocab, seed), 2 * pairs * seq, 0, max_pairs=pairs, max_seqlen=seq)
    assert len(packing.micro_batches) == 1
    return packing.micro_batches[0]


def measure(shape: str, head: str, args) -> dict:
    from maskdpo.flops import peak_bf16_flops, training_flops_per_token
    from maskdpo.model.architecture import Architecture
    from maskdpo.train.engine import PipelineTrainer

    config = Architecture(vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=ROPE,
                         **SHAPES[shape])
    batches = [synthetic_micro_batch(args.pairs, args.seq, config.vocab_size, seed) for seed in range(4)]
    reference = -500 * torch.rand(args.pairs, 2)
    free_memory()  # the peak is this head's alone
    times, trainer = [], None
    try:
        trainer = PipelineTrainer(config, pipeline_stages=1, gradient_accumulation_steps=1, bf16=True,
                                  optimizer_factory=lambda p: torch.optim.AdamW(p, lr=1e-6),
                                  attention=args.attention, activation_checkpointing=args.checkpointing, head=head,
                                  max_seqlen=args.seq)
        for step in range(args.warmup + args.steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step([batches[step % len(batches)]], reference)
            torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
        peak_bytes = torch.cuda.max_memory_allocated()
    finally:  # also when a step runs out of memory: the engine must not outlive this head
        if trainer is not None:
            drop_trainer(trainer)
        del trainer
    seconds = statistics.median(times)
    tokens = 2 * args.pairs * args.seq
    flops = training_flops_per_token(config, args.seq) * tokens / seconds
    peak = peak_bf16_flops(torch.cuda.get_device_name())
    result = {"shape": shape, "head": head, "step_s": seconds, "tokens_per_s": tokens / seconds,
              "model_tflops": flops / 1e12, "mfu": flops / peak if peak else None,
              "peak_memory_gib": peak_bytes / 2 ** 30, "step_times_s": times}
    return result


def drop_trainer(trainer) -> None:
    """Destroy a trainer's engine so that gc can free it. DeepSpeed's pipeline engine keeps the last
    step's outputs and loss, whose autograd graphs hold backward hooks pointing back at the engine: a
    cycle through C++ autograd nodes that gc cannot see, which would keep this head's model and
    optimizer state allocated while the next head is measured."""
    engine = trainer.engine
    engine.destroy()
    for key in getattr(engine, "pipe_buffers", {}):
        engine.pipe_buffers[key] = []
    engine.loss = engine.total_loss = None


def release() -> None:
    """Between heads: the engine is gone (measure destroyed it); collect its reference cycles, tear
    down the process group (each engine adds its own groups and their NCCL buffers), empty the cache
    and reset the peak, and give the next group a fresh port (the old store's may still linger)."""
    destroy_distributed()
    free_memory()
    os.environ["MASTER_PORT"] = str(free_port())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS), help="last-stage heads to time")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per micro-batch (2 sequences each)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if cuda_missing("training on a GPU"):
        return 2
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))

    rows = []
    for shape in args.shapes:
        for head in args.heads:
            try:
                row = measure(shape, head, args)
            except torch.OutOfMemoryError:
                row = {"shape": shape, "head": head, "error": "out of memory"}
            release()  # outside the handler: the traceback no longer holds the failed step's tensors
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "step_times_s"}), flush=True)
    env = {**environment(), "seq": args.seq, "pairs": args.pairs, "attention": args.attention,
           "checkpointing": args.checkpointing}
    gpu = env["gpu"]
    out_dir = results_dir(gpu, args.out_dir)
    (out_dir / "train.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    lines = [f"# Mask-DPO training throughput, {gpu}", "", json.dumps(env), "",
             "| shape | head | step s | tokens/s | model TFLOP/s | MFU | peak GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['head']} | {r['error']} | | | | |")
        else:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            lines.append(f"| {r['shape']} | {r['head']} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | "
                         f"{r['model_tflops']:.0f} | {mfu} | {r['peak_memory_gib']:.1f} |")
    (out_dir / "train.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir}/train.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
