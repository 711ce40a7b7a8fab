"""DeepSpeed pipeline (PP) x data parallel (DP, ZeRO-1) training of the Llama-shaped decoders with the Mask-DPO loss.

This is the only place that knows about stages, ranks and DeepSpeed. A step takes
gradient_accumulation_steps x DP packed micro-batches (maskdpo.train.loader decides which rank runs
which); each micro-batch's loss is the sum of its pair losses scaled so that, after DeepSpeed's mean
over micro-batches and data-parallel ranks, the step's loss is the mean over all of the step's pairs.
The reference pass is another use of the same pipeline: the last stage runs ReferenceTokenLogps
instead of the training objective, and the pipeline returns every response token's log-prob.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data import layout
from ..data.batch import pipeline_tensors, reference_for
from ..data.packing import MicroBatch
from ..dpo.objective import SUMS, MaskDPOObjective, ReferenceTokenLogps, SequenceSums, step_metrics
from ..kernels.vocab_parallel import VocabShard
from ..model.architecture import Architecture, check_window
from ..model.attention import resolve_backend
from ..model.llama import deterministic_attention as deterministic_attention_layers
from ..model.pipeline import (
    PIPELINE_ZERO_STAGES,
    Placement,
    build_pipeline,
    head_weight,
    load_hf_into_stage,
    stage_hf_tensors,
)
from ..model.shards import check_tensor_parallel
from ..model.tensor_parallel import TensorParallel, gather_full
from .distributed import compute_device, init_distributed
from .loader import data_parallel_share


def vocab_shard(weight, config: Architecture, tp: TensorParallel):
    """Where the LM head weight's rows lie in the vocabulary (its shard's place, maskdpo.model.shards'
    rule), for the vocabulary-parallel head: known from the layout, never asked of the group per
    step. None without tensor parallelism."""
    if weight is None or tp.size == 1:
        return None
    _, start, _ = weight.tp_slice
    return VocabShard(tp.group, start, config.vocab_size)


def check_parallelism(pipeline_stages: int, zero_stage: int, world_size: int, tensor_parallel: int = 1) -> int:
    """Validate a layout before any process starts; return the data-parallel degree
    (world = tensor_parallel x pipeline_stages x data_parallel)."""
    if pipeline_stages < 1:
        raise ValueError(f"pipeline_stages must be at least 1, got {pipeline_stages}")
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be at least 1, got {tensor_parallel}")
    replica = pipeline_stages * tensor_parallel
    if world_size % replica:
        what = (f"{pipeline_stages} pipeline stages" if tensor_parallel == 1
                else f"{tensor_parallel} tensor-parallel x {pipeline_stages} pipeline ranks")
        raise ValueError(f"{world_size} processes cannot form {what}: the process count must be a multiple of "
                         f"{replica}")
    if zero_stage not in PIPELINE_ZERO_STAGES:
        raise ValueError(f"ZeRO stage {zero_stage} cannot be combined with a DeepSpeed pipeline "
                         f"(it supports stages {PIPELINE_ZERO_STAGES}); use zero_stage=1 for sharded "
                         f"optimizer states")
    return world_size // replica


def tensor_parallel_group(topology) -> TensorParallel:
    """This rank's tensor-parallel group from DeepSpeed's topology (the "model" axis: adjacent ranks,
    inside a node). Every rank creates every group, in the same order, as torch.distributed requires."""
    rank, mine = dist.get_rank(), None
    for ranks in topology.get_axis_comm_lists("model"):
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = TensorParallel(group, ranks.index(rank), len(ranks))
    return mine


OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(gradient_accumulation_steps: int, data_parallel: int, zero_stage: int = 1,
                     bf16: bool = False, gradient_clipping: float = 0.0, overrides: dict | None = None,
                     tensor_parallel: int = 1) -> dict:
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
        # immediate_grad_update: each bf16 gradient goes into its fp32 accumulator as it is made.
        # Without it (DeepSpeed 0.19.8's default) a pipeline whose last stage uses the tied embedding
        # as its LM head loses that stage's gradient of it: the tied weights' all-reduce of the fp32
        # gradients runs before the last stage's are copied in, and the update was the embedding
        # side's alone (tests/test_pipeline.py, grads-pp2-tied-bf16).
        config["bf16"] = {"enabled": True, "immediate_grad_update": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}  # bf16 compute, fp32 accumulation
    if tensor_parallel > 1:
        # Stages send the whole (replicated) hidden state to the same tensor rank of the next stage;
        # DeepSpeed's partitioned sends assume Megatron's own activation layout.
        config["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    config = _merge(config, overrides or {})
    check_parallelism(1, config["zero_optimization"].get("stage", 0), 1)
    return config


def compute_dtype(bf16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 else torch.float32


def resolve_attention(name: str, device: torch.device, bf16: bool) -> str:
    """The attention backend for the dtype the model really runs in (the one place it is decided)."""
    return resolve_backend(name, device, compute_dtype(bf16))


@dataclass
class Layout:
    pipeline_stages: int
    data_parallel: int
    stage: int
    dp_rank: int
    tensor_parallel: int = 1
    tp_rank: int = 0

    @property
    def last_stage(self) -> bool:
        return self.stage == self.pipeline_stages - 1


class PipelineTrainer:
    """A pipeline engine (any family of maskdpo.model.architecture) with the Mask-DPO objective:
    reference pass, steps, checkpoints, HF export.

    Call inside a launched process group (deepspeed / torchrun set RANK, WORLD_SIZE, ...).
    head: fused, kernel or eager (maskdpo.dpo.objective.HEADS). attention: a backend name or auto,
    resolved here for the real compute dtype. max_seqlen: the longest sequence a micro-batch can
    hold (Packing.max_seqlen), attention's bound; None: the token budget. deterministic_attention:
    flash-attn's deterministic backward in every attention layer (model.deterministic_attention).
    """

    def __init__(self, config: Architecture, *, pipeline_stages: int, gradient_accumulation_steps: int,
                 optimizer_factory, hf_path: str | Path | None = None, zero_stage: int = 1, bf16: bool = False,
                 gradient_clipping: float = 0.0, beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, attention: str = "auto", activation_checkpointing: bool = False,
                 partition_method: str = "type:DecoderLayerPipe", lr_scheduler_factory=None, seed: int = 0,
                 head: str = "fused", max_seqlen: int | None = None, deepspeed_overrides: dict | None = None,
                 tensor_parallel: int = 1, deterministic_attention: bool = False):
        import deepspeed
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        init_distributed()
        data_parallel = check_parallelism(pipeline_stages, zero_stage, dist.get_world_size(), tensor_parallel)
        if tensor_parallel > 1:
            check_tensor_parallel(config, tensor_parallel)
            if head != "fused":
                raise ValueError(f"tensor_parallel {tensor_parallel} needs model.head: fused (the vocabulary is split "
                                 f"across tensor ranks), got {head!r}")
        if max_seqlen is not None:
            check_window(config, max_seqlen, "max_seqlen")
        torch.manual_seed(seed)  # the same random initialisation on every rank
        self.config = config
        self.max_seqlen = max_seqlen
        self.pin = compute_device().type == "cuda"  # labels copied to the GPU from pinned memory
        self.attention_backend = resolve_attention(attention, compute_device(), bf16)
        topology = (PipeModelDataParallelTopology(num_pp=pipeline_stages, num_mp=tensor_parallel, num_dp=data_parallel)
                    if tensor_parallel > 1 else None)
        self.tensor_parallel = tensor_parallel_group(topology) if topology is not None else TensorParallel(None, 0, 1)
        # From a checkpoint, each layer is built on the meta device and materialised as this rank's
        # shard in the training dtype, then read tensor by tensor (model.hf.load_state_dict): no rank
        # holds its stage unsharded or in fp32 when training in bf16. A random start (no checkpoint)
        # is built whole in fp32 with the seed, then sliced, as every layout would see it.
        meta = hf_path is not None
        placement = Placement(self.tensor_parallel if tensor_parallel > 1 else None, meta,
                              compute_dtype(bf16) if meta else None)
        module = build_pipeline(config, pipeline_stages, None, self.attention_backend, partition_method,
                                activation_checkpointing=activation_checkpointing, fused_head=head == "fused",
                                max_seqlen=max_seqlen, topology=topology, placement=placement)
        if hf_path is not None:
            load_hf_into_stage(module, hf_path, config.num_hidden_layers)
        deterministic_attention_layers(module, deterministic_attention)
        if bf16:
            module = module.to(compute_dtype(bf16))
        last = module.stage_id == module.num_stages - 1
        weight = head_weight(module) if head == "fused" and last else None
        sums = SequenceSums(head, weight, vocab_shard(weight, config, self.tensor_parallel)) if last else None
        self.objective = MaskDPOObjective(sums, beta, loss_type, label_smoothing) if last else None
        self.reference_tokens = ReferenceTokenLogps(sums) if last else None
        module.loss_fn = self.objective
        optimizer = optimizer_factory([p for p in module.parameters() if p.requires_grad])
        scheduler = lr_scheduler_factory(optimizer) if lr_scheduler_factory else None
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(gradient_accumulation_steps, data_parallel, zero_stage, bf16, gradient_clipping,
                                    deepspeed_overrides, tensor_parallel),
        )
        self.module = module
        self.layout = Layout(pipeline_stages, data_parallel, self.engine.stage_id,
                             self.engine.grid.get_data_parallel_rank(), tensor_parallel, self.tensor_parallel.rank)
        self.gradient_accumulation_steps = gradient_accumulation_steps

    @property
    def micro_batches_per_step(self) -> int:
        return self.gradient_accumulation_steps * self.layout.data_parallel

    def _my_share(self, micro_batches: list[MicroBatch]) -> list[MicroBatch]:
        return data_parallel_share(micro_batches, self.layout.data_parallel, self.layout.dp_rank)

    @contextlib.contextmanager
    def _last_stage_runs(self, loss_fn):
        """The pipeline's last stage computes `loss_fn` instead of the training objective. DeepSpeed's
        monitors (tensorboard, wandb, csv, comet in a config template) are paused: with one on,
        eval_batch broadcasts its output as a scalar loss, which per-sequence sums are not."""
        self.module.loss_fn, monitor = loss_fn, self.engine.monitor.enabled
        self.engine.monitor.enabled = False
        try:
            yield
        finally:
            self.module.loss_fn, self.engine.monitor.enabled = self.objective, monitor

    def _check_shapes(self, micro_batches: list[MicroBatch]) -> None:
        """Attention kernels trust max_seqlen to bound every sequence: a micro-batch packed with a
        larger bound would give wrong attention silently, so it is refused (a free CPU check); so is
        a sequence longer than the model's sliding window (attention here sees the whole sequence)."""
        window = self.config.sliding_window
        if self.max_seqlen is None and window is None:
            return
        for mb in micro_batches:
            longest = int(np.diff(mb.cu_seqlens).max())
            if self.max_seqlen is not None and longest > self.max_seqlen:
                raise ValueError(f"a micro-batch holds a sequence of {longest} tokens, more than max_seqlen "
                                 f"{self.max_seqlen} this pipeline was built with; pack with max_seqlen={self.max_seqlen}")
            check_window(self.config, longest, "a micro-batch's longest sequence")

    def reference_token_logps(self, micro_batches: list[MicroBatch]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """pair index -> (chosen, rejected): the frozen starting model's float32 log-prob of every
        response target of each side, in order; on every rank. Sums under any weights follow on the
        CPU (maskdpo.dpo.reference_cache.weighted_sums)."""
        self._check_shapes(micro_batches)
        mine = self._my_share(micro_batches)
        with self._last_stage_runs(self.reference_tokens):
            # One pipelined pass over all of this rank's micro-batches (evaluation keeps two buffers
            # whatever their number): one fill and drain instead of one per chunk.
            batches = [pipeline_tensors(mb, pin=self.pin) for mb in mine]
            outputs = self.engine.eval_batch(iter(batches), num_micro_batches=len(mine), reduce_output=None,
                                             bcast_loss=False)
        local = {}
        if self.layout.last_stage:
            for mb, logps in zip(mine, outputs):
                values, seq = logps.cpu().numpy()[mb.response_rows], mb.seq_ids[mb.response_rows]
                for slot, index in enumerate(mb.pair_index):
                    if index >= 0:
                        local[int(index)] = tuple(values[seq == layout.seq_id(slot, side)] for side in (0, 1))
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        tokens = {k: v for part in gathered for k, v in part.items()}
        bad = sorted(i for i, sides in tokens.items() if not all(np.isfinite(s).all() for s in sides))
        if bad:
            raise RuntimeError(f"the reference pass gave non-finite log-probs for pairs {bad[:10]}"
                               + (" ..." if len(bad) > 10 else "") + ": is the starting model finite?")
        return tokens

    def reference_logps(self, micro_batches: list[MicroBatch], num_pairs: int) -> torch.Tensor:
        """(num_pairs, 2) reference sums (chosen, rejected) under the micro-batches' own weights;
        pairs in none of them stay NaN."""
        from ..dpo.reference_cache import weighted_sums

        tokens = self.reference_token_logps(micro_batches)
        weights = {}
        for mb in micro_batches:
            w, seq = mb.weights[mb.response_rows], mb.seq_ids[mb.response_rows]
            for slot, index in enumerate(mb.pair_index):
                if index >= 0:
                    weights[int(index)] = tuple(w[seq == layout.seq_id(slot, side)] for side in (0, 1))
        return weighted_sums(tokens, weights, num_pairs)

    def train_step(self, micro_batches: list[MicroBatch], reference: torch.Tensor) -> dict[str, float]:
        """One optimizer step over micro_batches_per_step micro-batches (all ranks' micro-batches;
        each rank runs its share). The loss is the mean over the step's pairs; the metrics are
        pair-weighted means over the same pairs; `nonfinite_pairs` lists pairs whose loss was NaN or inf."""
        if len(micro_batches) != self.micro_batches_per_step:
            raise ValueError(f"a step takes {self.micro_batches_per_step} micro-batches "
                             f"(gradient_accumulation_steps x data_parallel), got {len(micro_batches)}")
        self._check_shapes(micro_batches)
        pairs = sum(mb.num_pairs for mb in micro_batches)
        if pairs == 0:
            raise ValueError("a step needs at least one pair")
        # DeepSpeed divides by the micro-batches of the step (accumulation, then the data-parallel mean).
        scale = len(micro_batches) / pairs
        batches = [pipeline_tensors(mb, reference_for(mb, reference), scale, pin=self.pin)
                   for mb in self._my_share(micro_batches)]
        self.engine.train_batch(iter(batches))
        return self._reduce_metrics()

    def _reduce_metrics(self) -> dict:
        """The step's sums from every last stage (other ranks add zeros), then means."""
        device = compute_device()
        if self.objective is not None:
            totals, bad = self.objective.take(device)
            if self.layout.tp_rank != 0:  # every tensor rank of the last stage computed the same sums
                totals, bad = torch.zeros_like(totals), []
        else:
            totals, bad = torch.zeros(len(SUMS), dtype=torch.float64, device=device), []
        flag = torch.tensor([float(len(bad))], dtype=torch.float64, device=device)
        both = torch.cat([totals, flag])
        dist.all_reduce(both)
        metrics = step_metrics(both[:-1].cpu())
        nonfinite = []
        if both[-1].item():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, bad)
            nonfinite = sorted({i for part in gathered for i in part})
        return {**metrics, "nonfinite_pairs": nonfinite}

    def parameters_finite(self) -> bool:
        """Whether every parameter of every stage is finite: one flag per rank, one all-reduce (called
        before a checkpoint is written, never inside a step)."""
        flags = [torch.isfinite(p).all() for p in self.module.parameters()]
        ok = torch.stack(flags).all().to(torch.float32).reshape(1) if flags else torch.ones(1)
        ok = ok.to(compute_device())
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def nonfinite_parameters(self) -> list[str]:
        """The (Hugging Face) names of parameters holding NaN or inf, on any stage."""
        from ..model.pipeline import hf_name

        local = [hf_name(n, self.config.num_hidden_layers) for n, p in self.module.named_parameters()
                 if not torch.isfinite(p).all()] if not self.parameters_finite() else []
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        return sorted({n for part in gathered for n in part})

    def learning_rate(self) -> float:
        """The learning rate the next step will use."""
        return self.engine.get_lr()[0]

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

        from ..model.hf import INDEX, write_config

        path = Path(path)
        shard = f"model-stage-{self.layout.stage + 1:05d}-of-{self.layout.pipeline_stages:05d}.safetensors"
        names = []
        if self.layout.dp_rank == 0:  # the first replica's tensor ranks gather each tensor together
            writer = self.layout.tp_rank == 0
            if writer:
                path.mkdir(parents=True, exist_ok=True)
            tensors = {}
            for name, t in stage_hf_tensors(self.module, self.config.num_hidden_layers).items():
                if self.layout.stage != 0 and name == "model.embed_tokens.weight":
                    continue  # a tied embedding is written once, by the first stage
                full = gather_full(t, self.tensor_parallel)  # one tensor at a time
                if writer:
                    tensors[name] = full.detach().to("cpu", dtype or t.dtype).contiguous()
                del full
            if writer:
                save_file(tensors, str(path / (shard + ".tmp")), metadata={"format": "pt"})
                os.replace(path / (shard + ".tmp"), path / shard)
                names = [(n, shard, t.numel() * t.element_size()) for n, t in tensors.items()]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (names, {t.dtype for t in tensors.values()} if names else set()))
        if dist.get_rank() == 0:
            entries = [e for part in gathered for e in part[0]]
            index = {"metadata": {"total_size": sum(e[2] for e in entries)},
                     "weight_map": {n: f for n, f, _ in sorted(entries)}}
            (path / INDEX).write_text(json.dumps(index, indent=2))
            write_config(path, self.config, {d for part in gathered for d in part[1]})
        dist.barrier()
