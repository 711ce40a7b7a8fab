"""DeepSpeed pipeline (PP) x data parallel (DP, ZeRO-1) training of Llama with the Mask-DPO loss.

This is the only place that knows about stages, ranks and DeepSpeed. A step takes
gradient_accumulation_steps x DP packed micro-batches (see maskdpo.data.packing); DP rank r gets
every DP-th of them, so the same list of micro-batches gives the same gradients whatever PP and DP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .data.packing import IGNORE_INDEX, MicroBatch
from .kernels import contributing_rows
from .model.attention import resolve_backend
from .model.llama import LlamaConfig
from .model.pipeline import PIPELINE_ZERO_STAGES, build_pipeline, head_weight, load_hf_into_stage, stage_hf_tensors
from .stage_loss import StageLoss


def collective_device() -> torch.device:
    """Where small host-side tensors go for collectives: NCCL takes only CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def check_parallelism(pipeline_stages: int, zero_stage: int, world_size: int) -> int:
    """Validate a layout before any process starts; return the data-parallel degree."""
    if pipeline_stages < 1:
        raise ValueError(f"pipeline_stages must be at least 1, got {pipeline_stages}")
    if world_size % pipeline_stages:
        raise ValueError(f"{world_size} processes cannot form {pipeline_stages} pipeline stages: "
                         f"the process count must be a multiple of pipeline_stages")
    if zero_stage not in PIPELINE_ZERO_STAGES:
        raise ValueError(f"ZeRO stage {zero_stage} cannot be combined with a DeepSpeed pipeline "
                         f"(it supports stages {PIPELINE_ZERO_STAGES}); use zero_stage=1 for sharded "
                         f"optimizer states")
    return world_size // pipeline_stages


OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(gradient_accumulation_steps: int, data_parallel: int, zero_stage: int = 1,
                     bf16: bool = False, gradient_clipping: float = 0.0, overrides: dict | None = None) -> dict:
    """The DeepSpeed config we run with; `overrides` (a template file's contents, see launch/) are
    merged over it, except the batch-size keys, which follow from the packing and the layout."""
    owned = [k for k in OWNED_KEYS if k in (overrides or {})]
    if owned:
        raise ValueError(f"DeepSpeed config overrides may not set {', '.join(owned)}: they follow from "
                         "--gradient-accumulation-steps and the process layout")
    config = {
        "train_micro_batch_size_per_gpu": 1,  # one packed micro-batch: many pairs, fixed token budget
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": gradient_accumulation_steps * data_parallel,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # we pass torch optimizers we build ourselves
        "gradient_clipping": gradient_clipping,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if bf16:
        config["bf16"] = {"enabled": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}  # bf16 compute, fp32 accumulation
    config = _merge(config, overrides or {})
    check_parallelism(1, config["zero_optimization"].get("stage", 0), 1)
    return config


def micro_batch_tensors(mb: MicroBatch, ref_logps: torch.Tensor):
    """(inputs, labels) for DeepSpeed: stage 0 reads inputs, the last stage reads labels.

    The labels end with the contributing rows, found here on the CPU so that the fused head's
    compaction needs no host sync on the GPU (labels are read by the last stage, never sent between
    stages, so their length may vary)."""
    inputs = (torch.from_numpy(mb.input_ids), torch.from_numpy(mb.position_ids), torch.from_numpy(mb.cu_seqlens))
    token_labels, weights, seq_ids = (torch.from_numpy(x) for x in (mb.labels, mb.weights, mb.seq_ids))
    active_rows = contributing_rows(token_labels, weights, seq_ids, ref_logps.shape[0], IGNORE_INDEX)
    labels = (token_labels, weights, seq_ids, ref_logps.float(), torch.from_numpy(mb.pair_index), active_rows)
    return inputs, labels


def empty_micro_batch(like: MicroBatch) -> MicroBatch:
    """A micro-batch with no pairs (pads a DP rank's share so every rank runs the same schedule)."""
    budget = like.input_ids.shape[0]
    return MicroBatch(
        input_ids=np.zeros_like(like.input_ids), position_ids=np.arange(budget, dtype=np.int64),
        cu_seqlens=np.concatenate([[0], np.full(like.cu_seqlens.shape[0] - 1, budget)]).astype(np.int32),
        labels=np.full(budget, IGNORE_INDEX, dtype=np.int64), weights=np.zeros(budget, dtype=np.float32),
        seq_ids=np.full(budget, -1, dtype=np.int64), pair_index=np.full_like(like.pair_index, -1),
    )


@dataclass
class Layout:
    pipeline_stages: int
    data_parallel: int
    stage: int
    dp_rank: int


class PipelineTrainer:
    """A Llama pipeline engine with Mask-DPO loss: reference pass, steps, checkpoints, HF export.

    Call inside a launched process group (deepspeed / torchrun set RANK, WORLD_SIZE, ...).
    """

    def __init__(self, config: LlamaConfig, *, pipeline_stages: int, gradient_accumulation_steps: int,
                 optimizer_factory, hf_path: str | Path | None = None, zero_stage: int = 1, bf16: bool = False,
                 gradient_clipping: float = 0.0, beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, attention_backend: str = "sdpa",
                 activation_checkpointing: bool = False, partition_method: str = "type:DecoderLayerPipe",
                 lr_scheduler_factory=None, seed: int = 0, fused_head: bool = True,
                 deepspeed_overrides: dict | None = None):
        import deepspeed

        world = int(os.environ.get("WORLD_SIZE", "1"))
        data_parallel = check_parallelism(pipeline_stages, zero_stage, world)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.manual_seed(seed)  # the same random initialisation on every rank
        self.config = config
        self.loss = StageLoss(beta, loss_type, label_smoothing)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        attention_backend = resolve_backend(attention_backend, device, torch.bfloat16 if bf16 else torch.float32)
        self.attention_backend = attention_backend
        module = build_pipeline(config, pipeline_stages, self.loss, attention_backend, partition_method,
                                activation_checkpointing=activation_checkpointing, fused_head=fused_head)
        if hf_path is not None:
            load_hf_into_stage(module, hf_path, config.num_hidden_layers)
        if bf16:
            module = module.to(torch.bfloat16)
        if fused_head and module.stage_id == module.num_stages - 1:
            self.loss.head_weight = head_weight(module)
        optimizer = optimizer_factory([p for p in module.parameters() if p.requires_grad])
        scheduler = lr_scheduler_factory(optimizer) if lr_scheduler_factory else None
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(gradient_accumulation_steps, data_parallel, zero_stage, bf16, gradient_clipping,
                                    deepspeed_overrides),
        )
        self.module = module
        self.layout = Layout(pipeline_stages, data_parallel, self.engine.stage_id,
                             self.engine.grid.get_data_parallel_rank())
        self.gradient_accumulation_steps = gradient_accumulation_steps

    @property
    def micro_batches_per_step(self) -> int:
        return self.gradient_accumulation_steps * self.layout.data_parallel

    def _my_share(self, micro_batches: list[MicroBatch]) -> list[MicroBatch]:
        dp, rank = self.layout.data_parallel, self.layout.dp_rank
        padded = micro_batches + [empty_micro_batch(micro_batches[0])] * (-len(micro_batches) % dp)
        return padded[rank::dp]

    def reference_logps(self, micro_batches: list[MicroBatch], num_pairs: int) -> torch.Tensor:
        """(num_pairs, 2) sums of the current (frozen, starting) model, by pair index; on every rank.

        Pairs that appear in none of the micro-batches stay NaN."""
        self.loss.mode, self.loss.records = "reference", []
        mine = self._my_share(micro_batches)
        zeros = torch.zeros(2 * micro_batches[0].pair_index.shape[0])
        try:
            # One pipelined pass over all of this rank's micro-batches (evaluation keeps two buffers
            # whatever their number): one fill and drain instead of one per chunk.
            self.engine.eval_batch(iter([micro_batch_tensors(mb, zeros) for mb in mine]), num_micro_batches=len(mine))
        finally:
            self.loss.mode = "train"
        local = [(idx.cpu(), sums.float().cpu()) for idx, sums in self.loss.records]
        self.loss.records = []
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        table = torch.full((num_pairs, 2), float("nan"))
        for records in gathered:
            for idx, sums in records:
                keep = idx >= 0
                table[idx[keep]] = sums[keep]
        present = sorted({int(i) for mb in micro_batches for i in mb.pair_index if i >= 0})
        missing = [i for i in present if torch.isnan(table[i]).any()]
        if missing:
            raise RuntimeError(f"reference pass produced no log-probs for pairs {missing[:10]}")
        return table

    def train_step(self, micro_batches: list[MicroBatch], reference: torch.Tensor) -> dict[str, float]:
        """One optimizer step over micro_batches_per_step micro-batches; metrics averaged over pairs."""
        if len(micro_batches) != self.micro_batches_per_step:
            raise ValueError(f"a step takes {self.micro_batches_per_step} micro-batches "
                             f"(gradient_accumulation_steps x data_parallel), got {len(micro_batches)}")
        self.loss.records = []
        mine = self._my_share(micro_batches)
        batches = [micro_batch_tensors(mb, self._ref_for(mb, reference)) for mb in mine]
        loss = self.engine.train_batch(iter(batches))
        return {"loss": float(loss), **self._reduce_metrics()}

    @staticmethod
    def _ref_for(mb: MicroBatch, reference: torch.Tensor) -> torch.Tensor:
        index = torch.from_numpy(mb.pair_index)
        values = reference[index.clamp(min=0)] * (index >= 0)[:, None]
        return values.reshape(-1)

    def _reduce_metrics(self) -> dict:
        """Pair-weighted means over every micro-batch of every DP replica (recorded on last stages),
        and `nonfinite_pairs`: the pair indices of micro-batches whose loss was NaN or inf."""
        names = ["rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
                 "kept_fraction/chosen", "kept_fraction/rejected"]
        totals = torch.zeros(len(names) + 2, dtype=torch.float64)
        bad = []
        for m in self.loss.records:
            pairs = m["pairs"].double().cpu()
            totals[:len(names)] += torch.stack([m[n].double().cpu() for n in names]) * pairs
            totals[len(names)] += pairs
            if not torch.isfinite(m["loss"]).item():
                bad += [int(i) for i in m["pair_index"].cpu() if i >= 0]
        totals[-1] = len(bad)
        self.loss.records = []
        totals = totals.to(collective_device())
        dist.all_reduce(totals)
        totals = totals.cpu()
        nonfinite = []
        if totals[-1].item():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, bad)
            nonfinite = sorted({i for part in gathered for i in part})
        count = max(totals[len(names)].item(), 1.0)
        return {**{n: totals[i].item() / count for i, n in enumerate(names)}, "pairs": totals[len(names)].item(),
                "nonfinite_pairs": nonfinite}

    def save_checkpoint(self, directory: str | Path, tag: str, client_state: dict | None = None,
                        save_latest: bool = True) -> None:
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state or {}, save_latest=save_latest)

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> dict:
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {directory}" + (f" with tag {tag}" if tag else ""))
        return client_state

    def export_hf(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """One HF checkpoint from all stages: each stage writes its own shard, rank 0 the index."""
        import json

        from safetensors.torch import save_file

        from .model.hf import INDEX

        path = Path(path)
        shard = f"model-stage-{self.layout.stage + 1:05d}-of-{self.layout.pipeline_stages:05d}.safetensors"
        names = []
        if self.layout.dp_rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            tensors = stage_hf_tensors(self.module, self.config.num_hidden_layers)
            if self.layout.stage != 0:  # a tied embedding is written once, by the first stage
                tensors = {n: t for n, t in tensors.items() if n != "model.embed_tokens.weight"}
            tensors = {n: t.detach().to("cpu", dtype or t.dtype).contiguous() for n, t in tensors.items()}
            save_file(tensors, str(path / (shard + ".tmp")), metadata={"format": "pt"})
            os.replace(path / (shard + ".tmp"), path / shard)
            names = [(n, shard, t.numel() * t.element_size()) for n, t in tensors.items()]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        if dist.get_rank() == 0:
            entries = [e for part in gathered for e in part]
            index = {"metadata": {"total_size": sum(e[2] for e in entries)},
                     "weight_map": {n: f for n, f, _ in sorted(entries)}}
            (path / INDEX).write_text(json.dumps(index, indent=2))
            hf_config = self.config.to_hf()
            if dtype is not None:  # transformers 5 reads "dtype", older versions "torch_dtype"
                hf_config["dtype"] = hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
            (path / "config.json").write_text(json.dumps(hf_config, indent=2))
        dist.barrier()
