"""The Llama-shaped decoder (every family) as a DeepSpeed PipelineModule whose last stage computes the Mask-DPO loss.

Layer layout (pipeline layer index -> block):
  0            EmbeddingPipe         (input_ids, position_ids, cu_seqlens) -> (hidden, position_ids, cu_seqlens)
  1 .. L       DecoderLayerPipe      the same triple, hidden updated
  L + 1        FinalNormPipe         -> normed hidden
  L + 2        LMHeadPipe, or the embedding tied back in (TiedLayerSpec)   -> logits (T, V)
then `loss_fn(logits, labels)` on the last stage. Only the hidden state is a float tensor between
stages (DeepSpeed sends a gradient back for every float tensor); positions and cu_seqlens travel as
integers. The stages never know about data or the loss beyond the callable they are given.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import Architecture
from .hf import to_hf_name
from .llama import DecoderLayer, Embedding, RMSNorm
from .tensor_parallel import TensorParallel, mark_shards, parallelize


@dataclass(frozen=True)
class Placement:
    """How every layer of a stage is made: sharded for tensor parallelism and, when its weights come
    from a checkpoint anyway, built on the meta device and materialised as its own shard only, in
    the training dtype. A stage is built one layer at a time, so no rank ever holds a layer unsharded."""

    tp: TensorParallel | None = None
    """This rank's tensor-parallel group (None: no tensor parallelism)."""
    meta: bool = False
    """Build on the meta device; the values are loaded afterwards (maskdpo.model.hf.load_state_dict)."""
    dtype: torch.dtype | None = None
    """The dtype meta-built layers are materialised in (None: as built, fp32)."""

    def building(self):
        return torch.device("meta") if self.meta else contextlib.nullcontext()

    def finish(self, layer: nn.Module) -> None:
        if self.tp is not None:
            parallelize(layer, self.tp)
        if self.meta:
            if self.dtype is not None:
                layer.to(self.dtype)
            layer.to_empty(device="cpu")
            mark_shards(layer)  # to_empty made new parameters


PLAIN = Placement()

# ZeRO stages DeepSpeed accepts together with a PipelineModule (2 and 3 raise inside the engine).
PIPELINE_ZERO_STAGES = (0, 1)


class EmbeddingPipe(Embedding):
    def __init__(self, config: Architecture, placement: Placement = PLAIN):
        with placement.building():
            super().__init__(config)
        placement.finish(self)

    def forward(self, inputs):
        input_ids, position_ids, cu_seqlens = inputs
        return super().forward(input_ids), position_ids, cu_seqlens


class DecoderLayerPipe(DecoderLayer):
    """max_seqlen: the longest sequence any micro-batch holds (packing guarantees it), which sizes
    the varlen attention kernels' work without a host sync; None: the token budget, always valid."""

    def __init__(self, config: Architecture, backend: str = "sdpa", max_seqlen: int | None = None,
                 placement: Placement = PLAIN):
        with placement.building():
            super().__init__(config, backend)
        placement.finish(self)
        self.max_seqlen = max_seqlen

    def forward(self, inputs):
        hidden, position_ids, cu_seqlens = inputs
        bound = hidden.shape[0] if self.max_seqlen is None else min(self.max_seqlen, hidden.shape[0])
        return super().forward(hidden, position_ids, cu_seqlens, bound), position_ids, cu_seqlens


class FinalNormPipe(nn.Module):
    def __init__(self, config: Architecture, placement: Placement = PLAIN):
        super().__init__()
        with placement.building():
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        placement.finish(self)

    def forward(self, inputs):
        return self.norm(inputs[0])


class LMHeadPipe(nn.Module):
    """The LM head. With `fused`, it passes the hidden states through and the loss applies its
    weight itself (linear_sequence_logps), so the whole logits never exist."""

    vocab_parallel_head = True  # tensor parallelism splits lm_head's rows (maskdpo.model.tensor_parallel)

    def __init__(self, config: Architecture, fused: bool = False, placement: Placement = PLAIN):
        super().__init__()
        with placement.building():
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.fused = fused
        placement.finish(self)

    def forward(self, hidden):
        return hidden if self.fused else self.lm_head(hidden)


def _tied_head(embedding: EmbeddingPipe, hidden):
    """The tied embedding matrix used as the LM head on the last stage."""
    return F.linear(hidden, embedding.embed_tokens.weight)


def _tied_head_fused(embedding: EmbeddingPipe, hidden):
    return hidden  # the loss applies embedding.embed_tokens.weight itself


def head_weight(module: nn.Module):
    """The LM head's weight on this (last) stage: lm_head.weight, or the tied embedding."""
    for layer in module.modules():
        if isinstance(layer, LMHeadPipe):
            return layer.lm_head.weight
    tied = getattr(module, "tied_modules", {})
    if "embed" in tied:
        return tied["embed"].embed_tokens.weight
    raise ValueError("this stage holds no LM head")


def layer_specs(config: Architecture, backend: str, fused_head: bool = False, max_seqlen: int | None = None,
                placement: Placement = PLAIN):
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if config.tie_word_embeddings:
        first = TiedLayerSpec("embed", EmbeddingPipe, config, placement, tied_weight_attr="embed_tokens.weight")
        last = TiedLayerSpec("embed", EmbeddingPipe, config, placement,
                             forward_fn=_tied_head_fused if fused_head else _tied_head,
                             tied_weight_attr="embed_tokens.weight")
    else:
        first, last = LayerSpec(EmbeddingPipe, config, placement), LayerSpec(LMHeadPipe, config, fused_head, placement)
    decoders = [LayerSpec(DecoderLayerPipe, config, backend, max_seqlen, placement)
                for _ in range(config.num_hidden_layers)]
    return [first, *decoders, LayerSpec(FinalNormPipe, config, placement), last]


def build_pipeline(config: Architecture, num_stages: int, loss_fn, backend: str = "sdpa",
                   partition_method: str = "type:DecoderLayerPipe", activation_checkpointing: bool = False,
                   fused_head: bool = False, max_seqlen: int | None = None, topology=None,
                   placement: Placement = PLAIN):
    """The PipelineModule (torch.distributed must be initialised). Decoder layers are split evenly
    across stages by default ("parameters" balances parameter counts instead). topology: DeepSpeed's
    PipeModelDataParallelTopology for tensor parallelism (None: pipeline x data)."""
    from deepspeed.pipe import PipelineModule

    if num_stages > config.num_hidden_layers:
        raise ValueError(f"{num_stages} pipeline stages for {config.num_hidden_layers} decoder layers: "
                         "every stage needs at least one")
    # Its seed, topology and per-stage layer lists are printed by DeepSpeed's rank 0: describe_stages
    # says the same in one line. No grad: a tied embedding is broadcast in place to its stages, which
    # autograd would otherwise record (and warn about at every backward) as a c10d op without a gradient.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        return PipelineModule(
            layers=layer_specs(config, backend, fused_head, max_seqlen, placement),
            num_stages=None if topology is not None else num_stages,
            topology=topology,
            loss_fn=loss_fn,
            partition_method=partition_method,
            activation_checkpoint_interval=1 if activation_checkpointing else 0,
            checkpointable_layers=["DecoderLayerPipe"],
        )


def describe_stages(module) -> str:
    """Which layers each stage holds, in one line: "stage 0: embedding, decoder 0-15; stage 1: ..."."""
    names = {"EmbeddingPipe": "embedding", "FinalNormPipe": "norm", "LMHeadPipe": "head"}
    stages, decoder = [], 0
    for stage in range(module.num_stages):
        parts, first = [], None
        specs = module._layer_specs[module.parts[stage]:module.parts[stage + 1]]
        for i, spec in enumerate(specs):
            kind = spec.typename.__name__
            first_layer = module.parts[stage] + i == 0
            if kind == "DecoderLayerPipe":
                first = decoder if first is None else first
                decoder += 1
                if i + 1 == len(specs) or specs[i + 1].typename.__name__ != kind:
                    parts.append(f"decoder {first}-{decoder - 1}" if decoder - 1 > first else f"decoder {first}")
                    first = None
            else:
                # The embedding appears again only as the tied LM head.
                tied_head = kind == "EmbeddingPipe" and not first_layer
                parts.append("head (tied embedding)" if tied_head else names.get(kind, kind))
        stages.append(f"stage {stage}: {', '.join(parts)}")
    return "; ".join(stages)


def model_name(pipe_name: str, num_layers: int) -> str:
    """A PipelineModule parameter name ("3.mlp.up_proj.weight", "tied_modules.embed....") -> the same
    parameter's name in maskdpo.model.llama.Llama (whose names model.hf maps to Hugging Face's)."""
    if pipe_name.startswith("tied_modules.embed."):
        return "embedding." + pipe_name[len("tied_modules.embed."):]
    match = re.fullmatch(r"(\d+)\.(.+)", pipe_name)
    if match is None:
        raise KeyError(f"no model name for pipeline parameter {pipe_name!r}")
    index, rest = int(match.group(1)), match.group(2)
    if index == 0:
        return "embedding." + rest
    if index <= num_layers:
        return f"layers.{index - 1}.{rest}"
    return "head." + rest  # norm.weight (layer L + 1), lm_head.weight (layer L + 2)


def hf_name(pipe_name: str, num_layers: int) -> str:
    """A PipelineModule parameter name -> its Hugging Face name (through the one map in model.hf)."""
    return to_hf_name(model_name(pipe_name, num_layers))


def stage_hf_tensors(module: nn.Module, num_layers: int) -> dict[str, torch.Tensor]:
    """This stage's parameters under HF names (a tied embedding appears once)."""
    return {hf_name(n, num_layers): p for n, p in module.named_parameters()}


def load_hf_into_stage(module: nn.Module, path, num_layers: int) -> None:
    """Fill this stage's parameters from an HF checkpoint directory, reading only its own tensors."""
    from .hf import load_state_dict

    load_state_dict(module, path, name_map=lambda n: hf_name(n, num_layers))
