"""`maskdpo plan`: the table, the recommendation, the reasons; or the same as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from .layouts import TERMS, LayoutPlan, PlanInputs, plan, recommend, terms
from .source import BUNDLED, load_model, parse_bytes

ASSUMPTIONS = (
    "bf16 weights and activations, fp32 gradient accumulation, ZeRO-1 over D (DeepSpeed's BF16_Optimizer), AdamW",
    "weights, gradients and optimizer state are exact; activations are estimated per token from the model's code "
    "(FlashAttention: no T x T scores; norms whole on every tensor rank)",
    "1F1B: stage s keeps min(P - s, micro-batches per step) micro-batches in flight; every token counted as "
    "contributing to the fused head (an upper bound)",
    "tensor rank 0 of the stage that needs most; in-place all-reduces and all-gathers add no buffer; "
    "--reserve covers the CUDA context, NCCL's buffers and fragmentation",
)


def add_plan_command(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of every tensor x pipeline x data-parallel layout, and which fit")
    p.add_argument("--model", required=True,
                   help=f"{', '.join(BUNDLED)} (bundled configs), an HF config.json or model directory, or a recipe YAML")
    p.add_argument("--gpus", type=int, required=True, help="GPUs of the job (T x P x D)")
    p.add_argument("--gpu-memory", required=True, help="memory per GPU, e.g. 80GB (10^9 bytes) or 80GiB")
    p.add_argument("--gpus-per-node", type=int, default=8, help="tensor parallelism stays inside a node")
    p.add_argument("--token-budget", type=int, default=None,
                   help="tokens per micro-batch (default: the recipe's data.token_budget, else 4096)")
    p.add_argument("--activation-checkpointing", choices=("on", "off", "both"), default=None,
                   help="plan with, without or both (default: the recipe's setting, else both)")
    p.add_argument("--reserve", default="4GB", help="memory per GPU left out of the plan")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def inputs_from(args: argparse.Namespace) -> PlanInputs:
    source = load_model(args.model)
    for option, value in (("--gpus", args.gpus), ("--gpus-per-node", args.gpus_per_node),
                          ("--token-budget", 1 if args.token_budget is None else args.token_budget)):
        if value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    memory, reserve = parse_bytes(args.gpu_memory, "--gpu-memory"), parse_bytes(args.reserve, "--reserve")
    if reserve >= memory:
        raise ValueError(f"--reserve {args.reserve} leaves nothing of --gpu-memory {args.gpu_memory}")
    mode = args.activation_checkpointing
    if mode is None:
        checkpointing = (True, False) if source.checkpointing is None else (source.checkpointing,)
    else:
        checkpointing = {"on": (True,), "off": (False,), "both": (True, False)}[mode]
    return PlanInputs(source.config, source.name, args.gpus, memory, args.gpus_per_node,
                      args.token_budget or source.token_budget or 4096, checkpointing,
                      source.partition or "type:DecoderLayerPipe", source.head or "fused",
                      batch_micro_batches=source.batch_micro_batches, reserve=reserve)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}"


def as_json(inputs: PlanInputs, rows: list[LayoutPlan]) -> dict:
    chosen = recommend(rows)

    def row(r: LayoutPlan) -> dict:
        worst = r.worst
        return {"tensor": r.tensor, "pipeline": r.pipeline, "data": r.data, "checkpointing": r.checkpointing,
                "fits": r.fits, "recommended": r in chosen, "reason": r.reason,
                "stage": None if worst is None else worst.stage, "bytes": None if worst is None else terms(worst),
                "total": None if worst is None else worst.total, "headroom": r.headroom,
                "parameters": None if worst is None else worst.state.parameters}

    c = inputs.config
    return {"model": inputs.model_name, "gpus": inputs.gpus, "gpu_memory": inputs.gpu_memory, "reserve": inputs.reserve,
            "gpus_per_node": inputs.gpus_per_node, "token_budget": inputs.tokens, "head": inputs.head,
            "partition": inputs.partition, "architecture": {k: getattr(c, k) for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "tie_word_embeddings")},
            "assumptions": list(ASSUMPTIONS), "layouts": [row(r) for r in rows]}


def as_table(inputs: PlanInputs, rows: list[LayoutPlan]) -> str:
    chosen = recommend(rows)
    head = ["T", "P", "D", "ckpt", *TERMS, "total", "headroom", ""]
    lines = []
    for r in rows:
        worst = r.worst
        values = [_gb(v) for v in terms(worst).values()] + [_gb(worst.total), _gb(r.headroom)] if worst else ["-"] * 9
        mark = "recommended" if r in chosen else "fits" if r.fits else "no: " + r.reason
        lines.append([str(r.tensor), str(r.pipeline), str(r.data), "on" if r.checkpointing else "off", *values, mark])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]  # noqa: E731
    out = [f"{inputs.model_name} on {inputs.gpus} x {inputs.gpu_memory / 1e9:.0f} GB "
           f"({_gb(inputs.gpu_memory - inputs.reserve)} GB usable each), {inputs.tokens} tokens per micro-batch; "
           "GB per GPU, the stage that needs most", fmt(head).rstrip(), *(fmt(x).rstrip() for x in lines), ""]
    if chosen:
        out += [f"recommended ({'with' if r.checkpointing else 'without'} activation checkpointing): "
                f"T={r.tensor} P={r.pipeline} D={r.data}, {_gb(r.worst.total)} GB of {_gb(r.usable)} GB" for r in chosen]
    else:
        out.append("no layout fits: more GPUs or GPU memory, fewer tokens per micro-batch"
                   + ("" if inputs.checkpointing == (True,) else ", or activation checkpointing"))
    out += ["", "assumptions:", *("  - " + a for a in ASSUMPTIONS)]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    try:
        inputs = inputs_from(args)
        rows = plan(inputs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(as_json(inputs, rows), indent=2) if args.json else as_table(inputs, rows))
    return 0
