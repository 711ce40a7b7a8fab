"""The architecture of the decoder to train, read once from a checkpoint's config.json (or a recipe's
model.architecture), for every family the model implements.

The families are the Llama-shaped decoders (pre-norm, RMSNorm, rotary embeddings, grouped-query
attention, SwiGLU MLP) that differ only in a few tensors, all named as Hugging Face names them:

    llama     LlamaForCausalLM     as is
    qwen2     Qwen2ForCausalLM     + q, k and v projection biases (Qwen2, Qwen2.5)
    qwen3     Qwen3ForCausalLM     + per-head RMSNorm on q and k before the rotary embedding
    mistral   MistralForCausalLM   as llama; a sliding window only as long as the sequences

Anything else -- another model_type, or a value of a field the model does not implement (rope
scaling kinds, attention or MLP biases, sliding windows, dropout, activation) -- is refused here by
name, before any process starts: the model is never silently a different one. Torch-free, so that
configuration checks need not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROPE_TYPES = ("default", "llama3")  # rope_scaling kinds maskdpo.model.llama.rope_inv_freq implements


@dataclass(frozen=True)
class Family:
    """What one model_type adds to the Llama layout."""

    model_type: str
    """config.json's model_type."""
    hf_class: str
    """The transformers class that loads it (config.json's architectures)."""
    qkv_bias: bool = False
    """The q, k and v projections have biases (Qwen2's); o_proj never does."""
    qk_norm: bool = False
    """Per-head RMSNorm on q and k (head_dim wide, shared by the heads) before rope (Qwen3's)."""
    window_field: bool = False
    """config.json's sliding_window is this family's attention window (Mistral's); the Qwen families
    turn a window on with use_sliding_window instead, which must be false."""
    fixed: tuple = ()
    """(config.json field, the only value the model implements, transformers' default)."""
    defaults: tuple = ()
    """(config.json field, transformers' default for this family when the field is absent): what
    transformers' config class reads then, so that a config.json that leaves it out means the same
    model here (Qwen3's head_dim is 128, not hidden / heads; Mistral's window is 4096; the key/value
    heads are 32 for Qwen, 8 for Mistral, and one per head only for Llama)."""


_ACTIVATION = ("hidden_act", "silu", "silu")
_DROPOUT = ("attention_dropout", 0.0, 0.0)
FAMILIES = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM",
           fixed=(_ACTIVATION, _DROPOUT, ("attention_bias", False, False), ("mlp_bias", False, False)),
           defaults=(("max_position_embeddings", 2048), ("bos_token_id", 1), ("eos_token_id", 2))),
    Family("qwen2", "Qwen2ForCausalLM", qkv_bias=True,
           fixed=(_ACTIVATION, _DROPOUT, ("use_sliding_window", False, False)),
           defaults=(("max_position_embeddings", 32768), ("num_key_value_heads", 32))),
    Family("qwen3", "Qwen3ForCausalLM", qk_norm=True,
           fixed=(_ACTIVATION, _DROPOUT, ("attention_bias", False, False), ("use_sliding_window", False, False)),
           defaults=(("max_position_embeddings", 32768), ("head_dim", 128), ("num_key_value_heads", 32))),
    Family("mistral", "MistralForCausalLM", window_field=True, fixed=(_ACTIVATION, _DROPOUT),
           defaults=(("max_position_embeddings", 131072), ("sliding_window", 4096), ("bos_token_id", 1),
                     ("eos_token_id", 2), ("num_key_value_heads", 8))),
)}


@dataclass
class Architecture:
    """The decoder, in Hugging Face's config.json terms. The defaults are Llama-3.1-8B's."""

    model_type: str = "llama"
    """The family (maskdpo.model.architecture.FAMILIES): llama, qwen2, qwen3 or mistral."""
    vocab_size: int = 128256
    """Rows of the embedding and of the LM head."""
    hidden_size: int = 4096
    """Width of the residual stream."""
    intermediate_size: int = 14336
    """Width of the SwiGLU MLP."""
    num_hidden_layers: int = 32
    """Decoder layers."""
    num_attention_heads: int = 32
    """Query heads."""
    num_key_value_heads: int = 8
    """Key/value heads (grouped-query attention); a config.json without it has the family's default
    (Family.defaults), a recipe's model.architecture one per query head."""
    head_dim: int | None = None
    """Width of a head; None: hidden_size // num_attention_heads (Qwen3 and Mistral may differ)."""
    rms_norm_eps: float = 1e-5
    """RMSNorm's epsilon (every norm, the q/k norms included)."""
    rope_theta: float = 500000.0
    """Rotary embedding base."""
    rope_scaling: dict | None = None
    """Llama-3.1 scaling {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}; None: plain RoPE. Other kinds are refused."""
    max_position_embeddings: int = 131072
    """The longest sequence the checkpoint was made for (written back; not enforced)."""
    tie_word_embeddings: bool = False
    """The LM head is the embedding matrix."""
    sliding_window: int | None = None
    """Mistral's attention window (tokens a position sees, itself included); None: the whole
    sequence. The model attends over the whole sequence, which is the window's result only for
    sequences no longer than it (check_window)."""
    bos_token_id: int | None = None
    """Written back to config.json."""
    eos_token_id: int | list | None = None
    """Written back to config.json."""
    extra: dict = field(default_factory=dict)
    """Every other config.json key, written back unchanged by the export."""

    FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
              "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id")

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"model_type {self.model_type!r} is not supported (only {', '.join(FAMILIES)})")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.sliding_window is not None and not self.family.window_field:
            raise ValueError(f"sliding_window ({self.sliding_window}) is not a field of {self.model_type}")

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def qkv_bias(self) -> bool:
        return self.family.qkv_bias

    @property
    def qk_norm(self) -> bool:
        return self.family.qk_norm

    @classmethod
    def from_hf(cls, data: dict, where: str = "config.json") -> Architecture:
        """From a config.json's keys; a one-line ValueError, starting with `where`, for anything the
        model does not implement."""
        data = dict(data)
        model_type = data.pop("model_type", "llama")
        if model_type not in FAMILIES:
            raise ValueError(f"{where}: model_type {model_type!r} is not supported (only {', '.join(FAMILIES)})")
        family = FAMILIES[model_type]
        # transformers 5 nests theta and scaling under rope_parameters (kept in extra: to_hf writes
        # them back in the form they were read).
        rope = data.get("rope_parameters") or {}
        if "rope_theta" in rope:  # transformers 5 reads rope_parameters first
            data["rope_theta"] = rope["rope_theta"]
        if data.get("rope_scaling") is None and rope.get("rope_type", "default") != "default":
            data["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        for key, supported, default in family.fixed:
            if data.get(key, default) != supported:
                raise ValueError(f"{where}: {key}={data[key]!r} is not supported for {model_type} (only {supported!r})")
        for source in (data, rope):  # a rotary embedding over part of each head is not implemented
            if source.get("partial_rotary_factor", 1.0) != 1.0:
                raise ValueError(f"{where}: partial_rotary_factor={source['partial_rotary_factor']!r} is not "
                                 "supported (only 1.0)")
        layer_types = data.get("layer_types") or []
        if any(kind != "full_attention" for kind in layer_types):
            raise ValueError(f"{where}: layer_types holds {sorted(set(layer_types) - {'full_attention'})} "
                             "(only full_attention is implemented)")
        scaling = data.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else scaling
        if kind not in ROPE_TYPES:
            raise ValueError(f"{where}: rope_scaling rope_type={kind!r} is not supported "
                             f"(only {', '.join(map(repr, ROPE_TYPES))})")
        # Hugging Face's defaults for keys a config.json may leave out (num_key_value_heads: from_architecture).
        data.setdefault("rope_theta", 10000.0)
        data.setdefault("rms_norm_eps", 1e-6)
        for key, value in family.defaults:
            data.setdefault(key, value)
        data.pop("architectures", None)  # the family's own class is written back
        fields = cls.FIELDS + (("sliding_window",) if family.window_field else ())
        known = {k: data.pop(k) for k in fields if k in data}
        if known.get("rope_scaling") and "type" in known["rope_scaling"] and "rope_type" not in known["rope_scaling"]:
            known["rope_scaling"] = {**known["rope_scaling"], "rope_type": known["rope_scaling"]["type"]}
        return cls.from_architecture({**known, "model_type": model_type, "extra": data})

    @classmethod
    def from_architecture(cls, architecture: dict) -> Architecture:
        """From a recipe's model.architecture (config.json keys; from_hf ends here too): as given,
        except that without num_key_value_heads there is one per attention head, as transformers
        reads a config.json (not this class's Llama-3 default of 8)."""
        architecture = dict(architecture)
        if architecture.get("num_key_value_heads") is None and "num_attention_heads" in architecture:
            architecture["num_key_value_heads"] = architecture["num_attention_heads"]
        return cls(**architecture)

    def to_hf(self) -> dict:
        """config.json's keys: the family's model_type and class, our fields, the rest as read."""
        out = {**self.extra, "model_type": self.model_type, "architectures": [self.family.hf_class]}
        out.update({k: getattr(self, k) for k in self.FIELDS})
        if "rope_parameters" in self.extra:  # transformers 5's form, as read
            out["rope_parameters"] = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
            del out["rope_theta"], out["rope_scaling"]
        if self.family.window_field:
            out["sliding_window"] = self.sliding_window
        return out


def check_window(architecture: Architecture, max_length: int, where: str = "data.max_length") -> None:
    """A sliding window shorter than the longest sequence would change what the model computes (the
    model attends over the whole sequence): a one-line ValueError naming both numbers."""
    window = architecture.sliding_window
    if window is not None and window < max_length:
        raise ValueError(f"{where} ({max_length}) is longer than the model's sliding_window ({window}): "
                         "sliding-window attention is not implemented; set data.max_length to at most "
                         f"{window}")
