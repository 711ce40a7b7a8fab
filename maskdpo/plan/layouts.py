"""Every layout T × P × D of a GPU count, its worst stage's memory, whether it fits and why not."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.architecture import Architecture
from ..model.shards import check_tensor_parallel, stages
from .memory import ActivationTerms, StateBytes, activation_terms, stage_state_bytes


@dataclass(frozen=True)
class PlanInputs:
    """What a plan is made for."""

    config: Architecture
    """The model's architecture."""
    model_name: str
    """How the model was named (file, directory or bundled name), for the report."""
    gpus: int
    """GPUs of the job: T × P × D."""
    gpu_memory: int
    """Bytes of memory per GPU."""
    gpus_per_node: int = 8
    """GPUs per node: tensor parallelism stays inside a node."""
    tokens: int = 4096
    """Tokens per packed micro-batch (data.token_budget)."""
    checkpointing: tuple = (True, False)
    """Activation checkpointing settings to plan for."""
    partition: str = "type:DecoderLayerPipe"
    """parallel.partition: how DeepSpeed splits the layers over stages."""
    head: str = "fused"
    """model.head: fused, kernel or eager."""
    micro_batches: int | None = None
    """Micro-batches per step and data-parallel rank (gradient accumulation); None: at least P."""
    batch_micro_batches: int | None = None
    """Micro-batches per optimizer step over all data-parallel ranks (batch_pairs / micro_batch_pairs); D divides it."""
    reserve: int = 4 * 10 ** 9
    """Bytes per GPU kept out of the plan: CUDA context, NCCL's buffers, allocator fragmentation."""


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage's memory on its busiest tensor rank (rank 0: it holds a vocabulary shard's extra row)."""

    stage: int
    """Stage index."""
    layers: int
    """Decoder layers on the stage."""
    state: StateBytes
    """Weights, gradients, optimizer state (exact)."""
    activation: ActivationTerms
    """Activations, working set, head, communication (estimated)."""

    @property
    def total(self) -> int:
        return self.state.total + self.activation.total


@dataclass
class LayoutPlan:
    """One layout and activation-checkpointing setting."""

    tensor: int
    """T: tensor-parallel ranks (inside a node)."""
    pipeline: int
    """P: pipeline stages."""
    data: int
    """D: data-parallel ranks (ZeRO-1 partitions the optimizer over these)."""
    checkpointing: bool
    """Activation checkpointing of the decoder layers."""
    stages: list = field(default_factory=list)
    """StagePlan of every stage (empty when the layout is impossible)."""
    usable: int = 0
    """GPU memory minus the reserve."""
    reason: str | None = None
    """Why it does not fit (None: it fits)."""

    @property
    def worst(self) -> StagePlan | None:
        return max(self.stages, key=lambda s: s.total) if self.stages else None

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def headroom(self) -> int | None:
        return None if self.worst is None else self.usable - self.worst.total


def factorisations(gpus: int) -> list[tuple[int, int, int]]:
    return [(t, p, gpus // (t * p)) for t in range(1, gpus + 1) if gpus % t == 0
            for p in range(1, gpus // t + 1) if (gpus // t) % p == 0]


TERMS = ("weights", "gradients", "optimizer", "activations", "working", "head", "communication")


def terms(stage: StagePlan) -> dict[str, int]:
    s, a = stage.state, stage.activation
    return {"weights": s.weights, "gradients": s.gradients, "optimizer": s.optimizer, "activations": a.activations,
            "working": a.working, "head": a.head, "communication": a.communication}


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def _why_not(stage: StagePlan, usable: int) -> str:
    parts = terms(stage)
    states = parts["weights"] + parts["gradients"] + parts["optimizer"]
    if states > usable:
        return (f"stage {stage.stage}: weights + gradients + optimizer state {_gb(states)} exceed the {_gb(usable)} usable "
                f"(gradients {_gb(parts['gradients'])}, optimizer {_gb(parts['optimizer'])})")
    largest = max(("activations", "working", "head", "communication"), key=parts.get)
    return (f"stage {stage.stage}: {largest} {_gb(parts[largest])} on top of {_gb(states)} of model states "
            f"exceed the {_gb(usable)} usable by {_gb(stage.total - usable)}")


def plan_layout(inputs: PlanInputs, tensor: int, pipeline: int, data: int, checkpointing: bool) -> LayoutPlan:
    out = LayoutPlan(tensor, pipeline, data, checkpointing, usable=inputs.gpu_memory - inputs.reserve)
    config = inputs.config
    try:
        check_tensor_parallel(config, tensor, inputs.model_name)
        parts = stages(config, pipeline, inputs.partition)
    except ValueError as e:
        out.reason = str(e)
        return out
    accumulation = inputs.micro_batches
    if inputs.batch_micro_batches is not None:
        if inputs.batch_micro_batches % data:
            out.reason = (f"{data} data-parallel ranks do not divide the step's {inputs.batch_micro_batches} micro-batches "
                          "(train.batch_pairs / train.micro_batch_pairs)")
            return out
        accumulation = inputs.batch_micro_batches // data
    for stage in parts:
        out.stages.append(StagePlan(
            stage.index, len(stage.decoder_layers), stage_state_bytes(config, stage, tensor, 0, data),
            activation_terms(config, stage, pipeline, tensor, inputs.tokens, checkpointing, accumulation, inputs.head)))
    if tensor > inputs.gpus_per_node:
        out.reason = f"T={tensor} spans nodes of {inputs.gpus_per_node} GPUs (tensor parallelism stays inside a node)"
    elif out.worst.total > out.usable:
        out.reason = _why_not(out.worst, out.usable)
    return out


def plan(inputs: PlanInputs) -> list[LayoutPlan]:
    """Every layout and checkpointing setting: those that fit first, most headroom first; then the rest,
    nearest to fitting first."""
    if inputs.gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {inputs.gpus}")
    rows = [plan_layout(inputs, t, p, d, c) for t, p, d in factorisations(inputs.gpus) for c in inputs.checkpointing]
    return sorted(rows, key=lambda r: (not r.fits, r.worst is None, -(r.headroom or 0), r.tensor, r.pipeline))


def recommend(rows: list[LayoutPlan]) -> list[LayoutPlan]:
    """Per checkpointing setting, the fitting layout with the smallest T (fewest all-reduces inside each
    layer), then the smallest P (smallest pipeline bubble, most data parallelism)."""
    best = {}
    for row in sorted((r for r in rows if r.fits), key=lambda r: (r.tensor, r.pipeline)):
        best.setdefault(row.checkpointing, row)
    return [best[c] for c in sorted(best, reverse=True)]
