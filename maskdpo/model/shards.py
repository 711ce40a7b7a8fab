"""How the model's parameters are split across tensor-parallel ranks and pipeline stages: the one rule
that tensor parallelism, checkpoint slicing and `maskdpo plan` share.

Tensor parallelism (Megatron, Shoeybi et al. 2019), T ranks:
  column-parallel (output rows split, dim 0):  q_proj, k_proj, v_proj, gate_proj, up_proj, and the
                                               q, k and v biases (Qwen2) with their rows
  row-parallel (input columns split, dim 1):   o_proj, down_proj
  vocab-parallel (vocabulary rows, dim 0):     embedding.embed_tokens, head.lm_head
  replicated:                                  input_layernorm, post_attention_layernorm, head.norm,
                                               the per-head q and k norms (Qwen3)
Shards are contiguous with torch.tensor_split's sizes: the first size % T ranks hold one row more and
nothing is padded (so a vocabulary that T does not divide works). T must divide the attention heads,
the key/value heads and the MLP width, so every rank holds whole heads.

Pipeline stages: the layer list of maskdpo.model.pipeline.layer_specs, split by DeepSpeed's own
partitioning function for the configured method; a tied embedding lives on every stage that uses it
(the first and the last), as DeepSpeed's TiedLayerSpec builds it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .architecture import Architecture

COLUMN, ROW, VOCAB, REPLICATED = "column", "row", "vocab", "replicated"


def layer_tensors(config: Architecture) -> dict[str, tuple[tuple[int, ...], str]]:
    """One decoder layer's tensors, unsharded: layer-relative name (ours and Hugging Face's, every
    family alike: "self_attn.q_proj.weight") -> (shape, split). The one table of what a family's
    layer holds: loading, export, tensor parallelism, the plan and the flop count read it."""
    h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    out = {
        "input_layernorm.weight": ((h,), REPLICATED),
        "self_attn.q_proj.weight": ((q, h), COLUMN),
        "self_attn.k_proj.weight": ((kv, h), COLUMN),
        "self_attn.v_proj.weight": ((kv, h), COLUMN),
        "self_attn.o_proj.weight": ((h, q), ROW),
        "post_attention_layernorm.weight": ((h,), REPLICATED),
        "mlp.gate_proj.weight": ((i, h), COLUMN),
        "mlp.up_proj.weight": ((i, h), COLUMN),
        "mlp.down_proj.weight": ((h, i), ROW),
    }
    if config.qkv_bias:
        out.update({"self_attn.q_proj.bias": ((q,), COLUMN), "self_attn.k_proj.bias": ((kv,), COLUMN),
                    "self_attn.v_proj.bias": ((kv,), COLUMN)})
    if config.qk_norm:
        out.update({"self_attn.q_norm.weight": ((d,), REPLICATED), "self_attn.k_norm.weight": ((d,), REPLICATED)})
    return out


EMBEDDING = "embedding.embed_tokens.weight"
FINAL_NORM = "head.norm.weight"
LM_HEAD = "head.lm_head.weight"
OUTER_SPLITS = {EMBEDDING: VOCAB, FINAL_NORM: REPLICATED, LM_HEAD: VOCAB}
SPLIT_DIM = {COLUMN: 0, ROW: 1, VOCAB: 0}


def check_tensor_parallel(config: Architecture, tensor_parallel: int, name: str = "the model") -> None:
    """Raise a one-line ValueError unless every rank can hold whole heads and an equal MLP share
    (`name`: the model, as the message calls it)."""
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be at least 1, got {tensor_parallel}")
    for field in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(config, field)
        if value % tensor_parallel:
            raise ValueError(f"tensor_parallel {tensor_parallel} does not divide {field} {value} of {name}'s config")


def shard_range(size: int, parts: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard of `size` rows: torch.tensor_split's sizes."""
    base, extra = divmod(size, parts)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def full_shapes(config: Architecture) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(one decoder layer's shapes by layer-relative name, the embedding/final norm/head shapes), unsharded."""
    h = config.hidden_size
    layer = {name: shape for name, (shape, _) in layer_tensors(config).items()}
    outer = {EMBEDDING: (config.vocab_size, h), FINAL_NORM: (h,)}
    if not config.tie_word_embeddings:
        outer[LM_HEAD] = (config.vocab_size, h)
    return layer, outer


def splits(config: Architecture) -> dict[str, str]:
    """How every parameter splits: layer-relative names (one decoder layer) and the outer ones."""
    return {**{name: split for name, (_, split) in layer_tensors(config).items()}, **OUTER_SPLITS}


def shard_slice(split: str, shape: tuple[int, ...], tensor_parallel: int, rank: int) -> tuple[int, int, int] | None:
    """(dim, start, stop) of rank's shard of a tensor of `shape` split as `split`; None: replicated."""
    if split == REPLICATED:
        return None
    dim = SPLIT_DIM[split]
    return (dim, *shard_range(shape[dim], tensor_parallel, rank))


def _sharded(shape, split, tensor_parallel, rank):
    where = shard_slice(split, shape, tensor_parallel, rank)
    if where is None:
        return tuple(shape)
    dim, start, stop = where
    return tuple(stop - start if k == dim else n for k, n in enumerate(shape))


@dataclass(frozen=True)
class RankShapes:
    """Per-rank parameter shapes of one tensor-parallel rank, under our model's parameter names."""

    layer: dict
    """One decoder layer: layer-relative name ("self_attn.q_proj.weight") -> shape; every layer alike."""
    embedding: dict
    """{"embedding.embed_tokens.weight": (rows of this rank's vocabulary shard, hidden)}."""
    norm: dict
    """{"head.norm.weight": (hidden,)}: replicated."""
    head: dict
    """{"head.lm_head.weight": (vocabulary shard rows, hidden)}; empty with tied embeddings (the head is the embedding)."""


def rank_shapes(config: Architecture, tensor_parallel: int, rank: int) -> RankShapes:
    """The shapes tensor-parallel rank `rank` of `tensor_parallel` holds (one decoder layer, embedding,
    final norm, head)."""
    check_tensor_parallel(config, tensor_parallel)
    if not 0 <= rank < tensor_parallel:
        raise ValueError(f"tensor-parallel rank {rank} is outside [0, {tensor_parallel})")
    layer, outer = full_shapes(config)
    split = splits(config)
    layer = {n: _sharded(s, split[n], tensor_parallel, rank) for n, s in layer.items()}
    outer = {n: _sharded(s, OUTER_SPLITS[n], tensor_parallel, rank) for n, s in outer.items()}
    return RankShapes(layer, {EMBEDDING: outer[EMBEDDING]}, {FINAL_NORM: outer[FINAL_NORM]},
                      {LM_HEAD: outer[LM_HEAD]} if LM_HEAD in outer else {})


# --- pipeline stages -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """What one pipeline stage holds."""

    index: int
    """Stage number, 0 = first."""
    decoder_layers: range
    """Decoder layer indices (0-based, as in layers.{i}) on this stage."""
    embedding: bool
    """Holds the embedding (the first stage; with tied embeddings also the last, as its head)."""
    final_norm: bool
    """Holds the final norm (the last stage)."""
    lm_head: bool
    """Holds an untied LM head (the last stage, untied embeddings)."""


def _spec_names(config: Architecture) -> list[str]:
    """The type name of every entry of pipeline.layer_specs, in order, without building any layer."""
    tied = config.tie_word_embeddings
    return ["EmbeddingPipe", *["DecoderLayerPipe"] * config.num_hidden_layers, "FinalNormPipe",
            "EmbeddingPipe" if tied else "LMHeadPipe"]


def _spec_counts(config: Architecture) -> list[int]:
    """Unsharded parameter count of every layer spec, as PipelineModule._count_layer_params counts them
    for partition "parameters" (a tied embedding is counted at both of its places). Unsharded, so
    that every tensor-parallel rank computes the same partition even when the vocabulary shards differ."""
    layer, outer = full_shapes(config)
    per_layer = sum(prod(s) for s in layer.values())
    embedding = prod(outer[EMBEDDING])
    head = embedding if config.tie_word_embeddings else prod(outer[LM_HEAD])
    return [embedding, *[per_layer] * config.num_hidden_layers, prod(outer[FINAL_NORM]), head]


def partition(config: Architecture, pipeline_stages: int, method: str = "type:DecoderLayerPipe") -> list[int]:
    """Boundaries (pipeline_stages + 1) over the layer specs, computed by DeepSpeed's own functions
    exactly as PipelineModule._partition_layers does for `method`."""
    import contextlib
    import sys

    # Importing DeepSpeed may print its accelerator detection on stdout: keep stdout for our output.
    with contextlib.redirect_stdout(sys.stderr):
        from ..accelerator import name_cpu_accelerator

        name_cpu_accelerator()
        from deepspeed.runtime import utils as ds_utils

    if pipeline_stages < 1:
        raise ValueError(f"pipeline_stages must be at least 1, got {pipeline_stages}")
    if pipeline_stages > config.num_hidden_layers:
        raise ValueError(f"{pipeline_stages} pipeline stages for {config.num_hidden_layers} decoder layers: "
                         "every stage needs at least one")
    names = _spec_names(config)
    lowered = method.lower()
    if lowered == "uniform":
        parts = ds_utils.partition_uniform(num_items=len(names), num_parts=pipeline_stages)
    elif lowered == "parameters":
        parts = ds_utils.partition_balanced(weights=_spec_counts(config), num_parts=pipeline_stages)
    elif lowered.startswith("type:"):
        import regex  # DeepSpeed matches layer types with `regex`, case-insensitively (module._find_layer_type)

        pattern = regex.compile(lowered.split(":", 1)[1], regex.IGNORECASE)
        weights = [1 if pattern.search(n) else 0 for n in names]
        if not any(weights):
            raise ValueError(f"partition {method!r} matches no layer type ({', '.join(sorted(set(names)))})")
        parts = ds_utils.partition_balanced(weights=weights, num_parts=pipeline_stages)
    else:
        raise ValueError(f"partition {method!r} is not one of type:<LayerType>, parameters, uniform")
    return [int(p) for p in parts]


def stages(config: Architecture, pipeline_stages: int, method: str = "type:DecoderLayerPipe") -> list[Stage]:
    """Every stage's contents under DeepSpeed's partition of pipeline.layer_specs."""
    parts = partition(config, pipeline_stages, method)
    num_layers, out = config.num_hidden_layers, []
    for s in range(pipeline_stages):
        specs = range(parts[s], parts[s + 1])
        layers = range(max(specs.start, 1) - 1, min(specs.stop, num_layers + 1) - 1)
        if not len(layers):
            raise ValueError(f"partition {method!r} leaves pipeline stage {s} of {pipeline_stages} without a decoder layer")
        last_spec = num_layers + 2
        out.append(Stage(s, layers, embedding=0 in specs or (config.tie_word_embeddings and last_spec in specs),
                         final_norm=num_layers + 1 in specs, lm_head=not config.tie_word_embeddings and last_spec in specs))
    return out


def stage_shapes(config: Architecture, stage: Stage, tensor_parallel: int, rank: int) -> dict[str, tuple[int, ...]]:
    """Our model's parameter name -> shape, for every parameter tensor-parallel rank `rank` of `stage` holds."""
    shapes = rank_shapes(config, tensor_parallel, rank)
    out = {f"layers.{i}.{n}": s for i in stage.decoder_layers for n, s in shapes.layer.items()}
    if stage.embedding:
        out.update(shapes.embedding)
    if stage.final_norm:
        out.update(shapes.norm)
    if stage.lm_head:
        out.update(shapes.head)
    return out


def stage_parameter_count(config: Architecture, stage: Stage, tensor_parallel: int, rank: int) -> int:
    """Parameters (elements) held by one (pipeline stage, tensor-parallel rank)."""
    return sum(prod(s) for s in stage_shapes(config, stage, tensor_parallel, rank).values())
