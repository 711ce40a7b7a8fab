"""Train Mask-DPO through the DeepSpeed pipeline: one entry point for every launcher.

    deepspeed --num_gpus 8 -m maskdpo.train --model DIR --pairs pairs.jsonl --out runs/x --pipeline-stages 2 --bf16
    torchrun --nproc_per_node 2 -m maskdpo.train ...      (CPU: gloo, the PyTorch kernel path)

Encodes and packs the pairs (cached), computes the reference log-probs with the starting model
(cached beside the encoded data), trains for --epochs or --steps, writes metrics.jsonl and exports
the policy as a Hugging Face checkpoint to OUT/hf. See launch/ for launcher scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m maskdpo.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="Hugging Face Llama directory (config.json + safetensors)")
    p.add_argument("--pairs", type=Path, required=True, help="pairs JSONL (ours or the authors' format)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory (default: --model, else bundled)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--cache-dir", type=Path, default=Path(".maskdpo-cache"), help="encoded data and reference cache")
    p.add_argument("--pipeline-stages", type=int, default=1)
    p.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2, 3])
    p.add_argument("--budget", type=int, default=4096, help="tokens per packed micro-batch")
    p.add_argument("--max-pairs", type=int, default=None, help="pairs per micro-batch at most (default: as packed)")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per side (prompt + response)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--lr", type=float, default=5e-7)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--gradient-clipping", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--loss-type", default="sigmoid", choices=["sigmoid", "ipo", "hinge"])
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true", help="bf16 weights and compute, fp32 gradient accumulation")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--partition", default="type:DecoderLayerPipe",
                   help="how layers split across stages: type:DecoderLayerPipe (equal decoder layers) or parameters")
    p.add_argument("--attention", default="auto", help="auto, flash_attn, torch_varlen or sdpa")
    p.add_argument("--deepspeed-config", type=Path, default=None,
                   help="JSON merged over the generated DeepSpeed config (templates in launch/)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist

    from .data import encode_file, load_tokenizer, pack_pairs
    from .engine import PipelineTrainer, check_parallelism
    from .model.attention import resolve_backend
    from .model.hf import load_config
    from .reference import load_reference, reference_key, save_reference

    world = int(os.environ.get("WORLD_SIZE", "1"))
    data_parallel = check_parallelism(args.pipeline_stages, args.zero_stage, world)
    rank = int(os.environ.get("RANK", "0"))
    say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = resolve_backend(args.attention, device)

    tokenizer_path = args.tokenizer or (args.model if (args.model / "tokenizer.json").exists() else None)
    encoded = encode_file(args.pairs, tokenizer_path, max_length=args.max_length, cache_dir=args.cache_dir)
    for line in encoded.summary_lines():
        say(line)
    tokenizer = load_tokenizer(tokenizer_path)
    packing = pack_pairs(encoded.pairs, args.budget, tokenizer.pad_token_id or 0, args.max_pairs)
    say(f"packed {len(encoded.pairs)} pairs into {len(packing.micro_batches)} micro-batches of {args.budget} "
        f"tokens ({packing.efficiency:.1%} used)")

    config = load_config(args.model)
    trainer = PipelineTrainer(
        config, pipeline_stages=args.pipeline_stages, gradient_accumulation_steps=args.gradient_accumulation_steps,
        optimizer_factory=lambda params: torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999),
                                                           weight_decay=args.weight_decay),
        hf_path=args.model, zero_stage=args.zero_stage, bf16=args.bf16, gradient_clipping=args.gradient_clipping,
        beta=args.beta, loss_type=args.loss_type, label_smoothing=args.label_smoothing, attention_backend=backend,
        activation_checkpointing=args.activation_checkpointing, partition_method=args.partition, seed=args.seed,
        deepspeed_overrides=json.loads(args.deepspeed_config.read_text()) if args.deepspeed_config else None,
    )

    key = reference_key(args.model, encoded.key, args.budget, packing.max_pairs, len(encoded.pairs))
    reference = load_reference(args.cache_dir, key)
    if reference is None:
        start = time.perf_counter()
        reference = trainer.reference_logps(packing.micro_batches, len(encoded.pairs))
        if rank == 0:
            save_reference(args.cache_dir, key, reference)
        say(f"reference log-probs: computed in {time.perf_counter() - start:.1f}s")
    else:
        say("reference log-probs: loaded from cache")

    per_step = trainer.micro_batches_per_step
    steps_per_epoch = max(1, len(packing.micro_batches) // per_step)
    total = args.steps or steps_per_epoch * args.epochs
    args.out.mkdir(parents=True, exist_ok=True)
    metrics_file = open(args.out / "metrics.jsonl", "a") if rank == 0 else None
    step = 0
    while step < total:
        epoch = step // steps_per_epoch
        order = list(range(len(packing.micro_batches)))
        random.Random(args.seed + epoch).shuffle(order)  # a fresh, reproducible order per epoch
        position = step % steps_per_epoch
        batch = [packing.micro_batches[order[(position * per_step + k) % len(order)]] for k in range(per_step)]
        start = time.perf_counter()
        metrics = trainer.train_step(batch, reference)
        step += 1
        record = {"step": step, "epoch": epoch, **metrics, "seconds": time.perf_counter() - start,
                  "tokens": sum(mb.tokens for mb in batch)}
        if metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        say(f"step {step}/{total}  loss {metrics['loss']:.4f}  acc {metrics['rewards/accuracy']:.3f}  "
            f"margin {metrics['rewards/margin']:.4f}  {record['tokens'] / record['seconds']:.0f} tok/s")
    trainer.export_hf(args.out / "hf", dtype=torch.bfloat16 if args.bf16 else None)
    if rank == 0:
        tokenizer.save_pretrained(str(args.out / "hf"))
    say(f"exported the policy to {args.out / 'hf'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
