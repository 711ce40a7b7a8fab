"""Model flops per trained token: the one place the MFU numerator is defined.

    flops/token = 6 * (non-embedding parameters + LM-head parameters) + 12 * layers * hidden * seq_len

6 = 2 (multiply-add) x 3 (forward, and a backward twice as costly) per weight; the LM head's matmul
counts even when its matrix is tied to the embedding (the lookup itself costs nothing); 12 * L * H * s
(with H the query width, heads x head_dim) is the attention scores and weighted sum (QK^T and AV),
forward and backward, for a sequence of length s (the causal half is not subtracted, as in the PaLM /
torchtitan convention). With reference log-probs precomputed, a Mask-DPO step trains the policy only,
so this is the whole step's cost.
"""

from __future__ import annotations

from math import prod

from .model.architecture import Architecture
from .model.shards import FINAL_NORM, full_shapes


def non_embedding_params(config: Architecture) -> int:
    """Every decoder layer's parameters (the family's: biases and q/k norms included) and the final norm."""
    layer, outer = full_shapes(config)
    return config.num_hidden_layers * sum(prod(s) for s in layer.values()) + prod(outer[FINAL_NORM])


def training_flops_per_token(config: Architecture, seq_len: int) -> int:
    head = config.vocab_size * config.hidden_size
    attention_width = config.num_attention_heads * config.head_dim
    return 6 * (non_embedding_params(config) + head) + 12 * config.num_hidden_layers * attention_width * seq_len


# Dense bf16 peaks by device-name fragment, most specific first (PCIe and NVL parts run lower clocks).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0))


def peak_bf16_flops(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None
