"""Run under torchrun by test_plan.py: the real PipelineTrainer (bf16, fp32 gradient accumulation,
ZeRO-1, AdamW) for one step on CPU, and the bytes DeepSpeed really allocated, per rank, to a file.

Scenarios: [tp{T}-]pp{P}-{tied|untied}, each a fresh engine with T tensor-parallel ranks (default 1),
P stages and D = WORLD_SIZE / (T P); tp scenarios use the --hf-tp* checkpoints (heads T divides).
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from pipeline_data import micro_batches

from maskdpo.model.hf import load_config
from maskdpo.model.pipeline import model_name
from maskdpo.train.engine import PipelineTrainer


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one flat buffer count once, whole)."""
    seen = {}
    for t in tensors:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def measure(hf: Path, pipeline_stages: int, tensor_parallel: int = 1) -> dict:
    config = load_config(hf)
    mbs, num_pairs = micro_batches()
    world = int(os.environ["WORLD_SIZE"])
    trainer = PipelineTrainer(config, pipeline_stages=pipeline_stages, tensor_parallel=tensor_parallel, bf16=True,
                              gradient_clipping=1.0,
                              gradient_accumulation_steps=len(mbs) * pipeline_stages * tensor_parallel // world,
                              optimizer_factory=lambda p: torch.optim.AdamW(p, lr=1e-3), hf_path=hf)
    optimizer = trainer.engine.optimizer
    params = list(trainer.module.parameters())
    seen = {}
    step = optimizer.step

    def measured_step(*args, **kwargs):
        # The parameters' own (bf16) gradients still held when the step starts: none, with DeepSpeed's
        # immediate_grad_update (each moved into the fp32 buffer as backward made it).
        seen["grad_bf16"] = storage_bytes(p.grad for p in params)
        seen["grad_dtypes"] = sorted({str(p.grad.dtype) for p in params if p.grad is not None})
        return step(*args, **kwargs)

    optimizer.step = measured_step
    trainer.train_step(mbs, trainer.reference_logps(mbs, num_pairs))
    state = [t for s in optimizer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "stage": trainer.layout.stage, "dp_rank": trainer.layout.dp_rank, "data_parallel": trainer.layout.data_parallel,
        "tp_rank": trainer.layout.tp_rank,
        "optimizer": type(optimizer).__name__,
        "names": sorted({model_name(n, config.num_hidden_layers) for n, _ in trainer.module.named_parameters()}),
        "parameters": sum(p.numel() for p in params),
        "weights": storage_bytes(params),
        "weight_dtypes": sorted({str(p.dtype) for p in params}),
        "grad_bf16": seen["grad_bf16"], "grad_dtypes": seen["grad_dtypes"],
        "grad_fp32": storage_bytes(optimizer.fp32_groups_gradients_flat),
        "master": storage_bytes(optimizer.fp32_groups_flat_partition),
        # AdamW's 0-dim step counter is host memory on a GPU too: the moments are what the plan counts.
        "moments": storage_bytes(t for t in state if t.dim() > 0),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--hf-tied", type=Path, required=True)
    parser.add_argument("--hf-tp", type=Path, default=None)
    parser.add_argument("--hf-tp-tied", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", nargs="+", required=True)
    args = parser.parse_args()
    for scenario in args.scenarios:
        tp = int(scenario.split("-")[0].removeprefix("tp")) if scenario.startswith("tp") else 1
        pp, tying = scenario.split("-")[-2].removeprefix("pp"), scenario.split("-")[-1]
        if tp > 1:
            hf = args.hf_tp_tied if tying == "tied" else args.hf_tp
        else:
            hf = args.hf_tied if tying == "tied" else args.hf
        result = measure(hf, int(pp), tp)
        (args.out / f"{scenario}-rank{dist.get_rank()}.json").write_text(json.dumps(result))
        dist.barrier()


if __name__ == "__main__":
    main()
