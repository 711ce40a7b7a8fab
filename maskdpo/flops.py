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

from .model.llama import LlamaConfig


def non_embedding_params(config: LlamaConfig) -> int:
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    q = config.num_attention_heads * config.head_dim
    attention = h * q + 2 * h * kv + q * h
    mlp = 3 * h * config.intermediate_size
    norms = 2 * h
    return config.num_hidden_layers * (attention + mlp + norms) + h  # + final norm


def training_flops_per_token(config: LlamaConfig, seq_len: int) -> int:
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
