"""Llama as a DeepSpeed PipelineModule whose last stage computes the Mask-DPO loss.

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

import re

import torch
import torch.nn.functional as F
from torch import nn

from .hf import to_hf_name
from .llama import DecoderLayer, Embedding, LlamaConfig, RMSNorm

# ZeRO stages DeepSpeed accepts together with a PipelineModule (2 and 3 raise inside the engine).
PIPELINE_ZERO_STAGES = (0, 1)


class EmbeddingPipe(Embedding):
    def forward(self, inputs):
        input_ids, position_ids, cu_seqlens = inputs
        return super().forward(input_ids), position_ids, cu_seqlens


class DecoderLayerPipe(DecoderLayer):
    """max_seqlen: the longest sequence any micro-batch holds (packing guarantees it), which sizes
    the varlen attention kernels' work without a host sync; None: the token budget, always valid."""

    def __init__(self, config: LlamaConfig, backend: str = "sdpa", max_seqlen: int | None = None):
        super().__init__(config, backend)
        self.max_seqlen = max_seqlen

    def forward(self, inputs):
        hidden, position_ids, cu_seqlens = inputs
        bound = hidden.shape[0] if self.max_seqlen is None else min(self.max_seqlen, hidden.shape[0])
        return super().forward(hidden, position_ids, cu_seqlens, bound), position_ids, cu_seqlens


class FinalNormPipe(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, inputs):
        return self.norm(inputs[0])


class LMHeadPipe(nn.Module):
    """The LM head. With `fused`, it passes the hidden states through and the loss applies its
    weight itself (linear_sequence_logps), so the whole logits never exist."""

    def __init__(self, config: LlamaConfig, fused: bool = False):
        super().__init__()
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.fused = fused

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


def layer_specs(config: LlamaConfig, backend: str, fused_head: bool = False, max_seqlen: int | None = None):
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if config.tie_word_embeddings:
        first = TiedLayerSpec("embed", EmbeddingPipe, config, tied_weight_attr="embed_tokens.weight")
        last = TiedLayerSpec("embed", EmbeddingPipe, config, forward_fn=_tied_head_fused if fused_head else _tied_head,
                             tied_weight_attr="embed_tokens.weight")
    else:
        first, last = LayerSpec(EmbeddingPipe, config), LayerSpec(LMHeadPipe, config, fused_head)
    decoders = [LayerSpec(DecoderLayerPipe, config, backend, max_seqlen) for _ in range(config.num_hidden_layers)]
    return [first, *decoders, LayerSpec(FinalNormPipe, config), last]


def build_pipeline(config: LlamaConfig, num_stages: int, loss_fn, backend: str = "sdpa",
                   partition_method: str = "type:DecoderLayerPipe", activation_checkpointing: bool = False,
                   fused_head: bool = False, max_seqlen: int | None = None):
    """The PipelineModule (torch.distributed must be initialised). Decoder layers are split evenly
    across stages by default ("parameters" balances parameter counts instead)."""
    from deepspeed.pipe import PipelineModule

    if num_stages > config.num_hidden_layers:
        raise ValueError(f"{num_stages} pipeline stages for {config.num_hidden_layers} decoder layers: "
                         "every stage needs at least one")
    return PipelineModule(
        layers=layer_specs(config, backend, fused_head, max_seqlen),
        num_stages=num_stages,
        loss_fn=loss_fn,
        partition_method=partition_method,
        activation_checkpoint_interval=1 if activation_checkpointing else 0,
        checkpointable_layers=["DecoderLayerPipe"],
    )


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
