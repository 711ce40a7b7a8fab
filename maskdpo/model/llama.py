"""The Llama-shaped decoder (every family of maskdpo.model.architecture) in plain PyTorch, over
packed sequences.

The model works on a flat stream of T tokens holding several sequences end to end (positions
restart per sequence, cu_seqlens marks the boundaries): exactly what the packed micro-batches hold
and what the pipeline sends between stages. Submodule and parameter names follow Hugging Face's
*ForCausalLM inside each block, so checkpoints map over by prefix (see hf.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import ROPE_TYPES, Architecture
from .attention import packed_causal_attention


def rope_inv_freq(config: Architecture) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with Llama-3.1 frequency-dependent scaling."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if not scaling or scaling.get("rope_type", "default") == "default":
        return inv_freq
    if scaling.get("rope_type") != "llama3":
        raise ValueError(f"rope_scaling type {scaling.get('rope_type')!r} is not supported "
                         f"({', '.join(ROPE_TYPES)})")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and the band in
    # between interpolated smoothly.
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, blended, scaled)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x, weight, eps: float):
    """RMSNorm over the last dimension: normalised in fp32, scaled in the input dtype (as Llama's and
    Qwen's references do)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for given positions; computed in fp32 for every call (no cache to go stale).

    The inverse frequencies stay fp32 whatever the module is cast to: rounded to bf16 they would
    shift the angles by radians at long positions (Hugging Face keeps them fp32 too).
    """

    def __init__(self, config: Architecture):
        super().__init__()
        with torch.device("cpu"):  # real values even when the model is built on the meta device
            self._inv_freq_fp32 = rope_inv_freq(config)
        self.register_buffer("inv_freq", self._inv_freq_fp32.clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq_fp32.to(self.inv_freq.device)
        return self

    def forward(self, position_ids, dtype):
        freqs = position_ids.float()[:, None] * self.inv_freq.to(position_ids.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, config: Architecture, backend: str):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        bias = config.qkv_bias  # Qwen2's q, k and v biases
        self.q_proj = nn.Linear(h, self.heads * d, bias=bias)
        self.k_proj = nn.Linear(h, self.kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, self.kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)
        if config.qk_norm:  # Qwen3's: one head_dim-wide norm each for q and k, shared by the heads
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.backend = backend
        self.deterministic = False  # flash-attn's deterministic backward (deterministic_attention)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen):
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.heads, self.head_dim)
        k = self.k_proj(x).view(t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head, before the rotary embedding
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = packed_causal_attention(q, k, v, cu_seqlens, max_seqlen, self.backend, self.head_dim ** -0.5,
                                      self.deterministic)
        return self.o_proj(out.reshape(t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: Architecture):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm attention and SwiGLU MLP blocks with residuals. Parameters named as HF's layer."""

    def __init__(self, config: Architecture, backend: str = "sdpa"):
        super().__init__()
        self.architecture = config  # what parallelism applied from outside reads (shards.layer_tensors)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.rotary = Rotary(config)

    def forward(self, x, position_ids, cu_seqlens, max_seqlen: int):
        cos, sin = self.rotary(position_ids, x.dtype)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens, max_seqlen)
        return x + self.mlp(self.post_attention_layernorm(x))


class Embedding(nn.Module):
    def __init__(self, config: Architecture):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)


class Head(nn.Module):
    """Final norm and LM head. With tied embeddings the head reuses the embedding matrix."""

    def __init__(self, config: Architecture):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, x, embedding_weight=None):
        weight = embedding_weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.norm(x), weight)


class Llama(nn.Module):
    """The whole model on one device: packed tokens in, logits out."""

    def __init__(self, config: Architecture, backend: str = "sdpa"):
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.layers = nn.ModuleList(DecoderLayer(config, backend) for _ in range(config.num_hidden_layers))
        self.head = Head(config)

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen: int | None = None):
        """input_ids, position_ids (T,); cu_seqlens (S + 1,) int32 -> logits (T, V)."""
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        x = self.embedding(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids, cu_seqlens, max_seqlen)
        return self.head(x, self.embedding.embed_tokens.weight)


def deterministic_attention(module: nn.Module, on: bool = True) -> int:
    """Ask every attention layer inside `module` for a deterministic backward (flash-attn's; applied
    from outside, as parallelism is). Returns how many layers it set."""
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.deterministic = on
    return len(layers)
