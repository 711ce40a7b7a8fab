"""Per-GPU memory of one training layout (tensor × pipeline × data parallel), term by term.

Exact terms (what DeepSpeed allocates; tests/test_plan.py measures them in real CPU runs), for the
configuration maskdpo.train.engine builds (bf16 with fp32 gradient accumulation and ZeRO-1, which
DeepSpeed runs with its BF16_Optimizer), with n the parameters of one (stage, tensor rank) and
n_pad = n rounded up to a multiple of 2·D (the optimizer's flat-buffer alignment):
  weights      bf16 flat buffer the module's parameters point into      2 · n_pad
  gradients    the parameters' own bf16 .grad (autograd's)              2 · n
               + the fp32 accumulation buffer, whole, not partitioned   4 · n_pad
  optimizer    fp32 master partition + AdamW's two fp32 moments         12 · n_pad / D
               (AdamW's 0-dim step counter lives on the host: not counted)

Estimated terms (per token of the micro-batch, bf16 activations, from maskdpo.model.llama's code;
the method of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", adapted to our layers): see `layer_activation_bytes` and `ActivationTerms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from ..model.architecture import Architecture
from ..model.shards import Stage, rank_shapes, stage_parameter_count, stage_shapes

BF16, FP32, INT64 = 2, 4, 8
# BF16_Optimizer pads its flat buffers to nccl_start_alignment_factor (2) × the data-parallel size.
ALIGNMENT = 2


@dataclass(frozen=True)
class StateBytes:
    """Model-state bytes of one (pipeline stage, tensor rank, data rank): what DeepSpeed allocates."""

    parameters: int
    """Parameters held (elements)."""
    weights: int
    """bf16 weights: the optimizer's padded flat buffer."""
    grad_bf16: int
    """The parameters' bf16 .grad tensors kept: none. Each is added into the fp32 buffer as soon as
    backward makes it and freed (bf16.immediate_grad_update, maskdpo.train.engine), so at most one
    tensor's lives, for a moment, inside the activations' headroom."""
    grad_fp32: int
    """The fp32 gradient-accumulation buffer (padded, whole on every data-parallel rank)."""
    master: int
    """fp32 master weights: this data-parallel rank's partition."""
    moments: int
    """AdamW's exp_avg and exp_avg_sq, fp32, over the master partition."""

    @property
    def gradients(self) -> int:
        return self.grad_bf16 + self.grad_fp32

    @property
    def optimizer(self) -> int:
        return self.master + self.moments

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def padded(parameters: int, data_parallel: int) -> int:
    align = ALIGNMENT * data_parallel
    return -(-parameters // align) * align


def state_bytes(parameters: int, data_parallel: int) -> StateBytes:
    """Model-state bytes for `parameters` elements on one GPU of a ZeRO-1 group of `data_parallel`."""
    flat = padded(parameters, data_parallel)
    partition = flat // data_parallel
    return StateBytes(parameters, weights=BF16 * flat, grad_bf16=0, grad_fp32=FP32 * flat,
                      master=FP32 * partition, moments=2 * FP32 * partition)


def stage_state_bytes(config: Architecture, stage: Stage, tensor_parallel: int, rank: int, data_parallel: int) -> StateBytes:
    return state_bytes(stage_parameter_count(config, stage, tensor_parallel, rank), data_parallel)


# --- activations ---------------------------------------------------------------------------------

def norm_saved_bytes(hidden: int) -> int:
    """RMSNorm saves, per token: the fp32 copy of its input (pow and the product), the fp32 rsqrt,
    and the bf16 normalised input (for the weight's gradient)."""
    return FP32 * hidden + FP32 + BF16 * hidden


def layer_activation_bytes(config: Architecture, tensor_parallel: int) -> int:
    """Bytes per token one decoder layer keeps for its backward (no checkpointing), with a
    FlashAttention-style kernel (it saves q, k, v, the output and fp32 log-sum-exp, never T × T).
    Norms and their outputs are whole on every tensor rank (no sequence parallelism); everything
    between a column- and a row-parallel projection is 1/T. The rotary products save only cos and sin.
    Biases (Qwen2) save nothing more: the projection keeps its input anyway."""
    h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
    t = tensor_parallel
    heads, kv = config.num_attention_heads // t, config.num_key_value_heads // t
    norms = 2 * (norm_saved_bytes(h) + BF16 * h)            # each norm's saved tensors + its output (the projections' input)
    attention = BF16 * (2 * heads * d + 2 * kv * d) + FP32 * heads  # q, out; k, v (rotated k, v); lse
    mlp = BF16 * 4 * (i // t)                                  # gate out (silu's input), silu out, up out, product (down's input)
    rotary = 2 * BF16 * d                                      # cos and sin, made per layer
    if config.qk_norm:  # Qwen3: q's and k's per-head norms, each head as norm_saved_bytes(d) (its own rsqrt)
        attention += (heads + kv) * norm_saved_bytes(d)
    return norms + attention + mlp + rotary


@dataclass(frozen=True)
class ActivationTerms:
    """Activation-side bytes of one (stage, tensor rank) for a micro-batch of `tokens` tokens."""

    in_flight: int
    """Micro-batches whose activations are alive at once: min(P - stage, micro-batches per step) under 1F1B."""
    activations: int
    """Saved activations of all in-flight micro-batches (layer inputs only with checkpointing)."""
    working: int
    """Backward working set, once: a recomputed layer (checkpointing), gradient temporaries, the
    largest parameter's fresh gradient before it is added to .grad."""
    head: int
    """Last stage: the fused head's logits chunk and compacted rows (or the whole logits for the
    kernel and eager heads)."""
    communication: int
    """Buffers beyond the tensors above: the pipeline's gradient receive buffer, vocab-parallel row statistics."""

    @property
    def total(self) -> int:
        return self.activations + self.working + self.head + self.communication


def activation_terms(config: Architecture, stage: Stage, pipeline_stages: int, tensor_parallel: int, tokens: int,
                     checkpointing: bool, micro_batches: int | None = None, head: str = "fused",
                     chunk_rows: int = 2048) -> ActivationTerms:
    h, t = config.hidden_size, tensor_parallel
    layers = len(stage.decoder_layers)
    last = stage.index == pipeline_stages - 1
    per_layer = layer_activation_bytes(config, t)
    # One micro-batch: layers' saved tensors (checkpointing: each layer's input, which the checkpoint keeps),
    # the stage's output held for its backward, its input (received hidden, or token ids on the first stage),
    # position ids; on the last stage the final norm's saved tensors and output (the head's input).
    saved = layers * (BF16 * h if checkpointing else per_layer)
    boundary = BF16 * h + INT64 + (INT64 if stage.index == 0 else 0 if checkpointing else BF16 * h)
    if last:
        boundary += norm_saved_bytes(h) + BF16 * h
    in_flight = pipeline_stages - stage.index if micro_batches is None else min(pipeline_stages - stage.index, micro_batches)
    activations = in_flight * tokens * (saved + boundary)

    shapes = stage_shapes(config, stage, t, 0)
    largest = max(prod(s) for s in shapes.values())
    # Gradient temporaries: two hidden-sized (the residual stream's and a branch's) and three MLP-width.
    working = tokens * BF16 * (2 * h + 3 * (config.intermediate_size // t)) + BF16 * largest
    if checkpointing:
        working += tokens * per_layer
    vocab = rank_shapes(config, t, 0).embedding["embedding.embed_tokens.weight"][0]
    head_bytes = 0
    if last:
        if head == "fused":
            # kernels/linear_sequence_logps.py: one chunk of logits, the compacted rows and their gradient
            # (every token counted as contributing: an upper bound), and the hidden states' gradient.
            head_bytes = min(chunk_rows, tokens) * vocab * BF16 + 2 * tokens * h * BF16 + tokens * h * BF16
        elif head == "kernel":
            head_bytes = tokens * vocab * BF16  # whole logits; the kernel writes their gradient over them
        else:
            head_bytes = tokens * vocab * (BF16 + 2 * FP32)  # logits, their fp32 upcast and log-softmax
    communication = (tokens * BF16 * h if not last else 0) + (tokens * 4 * FP32 if last and t > 1 else 0)
    return ActivationTerms(in_flight, activations, working, head_bytes, communication)
