"""Tiny Hugging Face Llama checkpoints built in code with transformers itself (no hub)."""

import torch
import transformers

# A float32 run's first-step loss against log 2 (the reference is the starting policy) or the float64
# oracle's. The policy's and the reference's sequence sums (|sum| up to about 650 nats on these tiny
# models) come from two float32 passes, each within a few roundings of the sum (2**-24 * 650 = 4e-5);
# the margin is beta (0.1) times four such sums, the loss's slope at 0 is 1/2: within about 1e-5.
# Measured: under 1e-6 on the machines of 2026-12-02 to 04, 1.0e-6 to 1.5e-6 on 2026-12-06's (the same
# code; float32 kernels differ by CPU). A wrong reference or normalisation shows in the reference sums
# and the update, which test_pipeline and test_tensor_parallel check against the oracle.
FP32_FIRST_LOSS_ATOL = 1e-5

CONFIGS = {
    "gqa-rope-scaling": dict(num_key_value_heads=2, tie_word_embeddings=False,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "tied-mha": dict(num_key_value_heads=4, tie_word_embeddings=True, rope_scaling=None),
}


def tiny_hf_llama(path, variant="gqa-rope-scaling", seed=0, vocab_size=128, layers=2, shard=None):
    """Save a random tiny LlamaForCausalLM to `path`; return it (fp32, eval mode)."""
    torch.manual_seed(seed)
    options = dict(CONFIGS[variant])
    rope_scaling = options.pop("rope_scaling")
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=0, eos_token_id=1, **options,
    )
    if rope_scaling:
        config.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, **rope_scaling}
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise them so they are tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(path), max_shard_size=shard or "10GB")
    return model


# The other families, each with what sets it apart from Llama made visible: Qwen2's q/k/v biases
# (with GQA), Qwen3's q/k norms with a head_dim that is not hidden / heads and tied embeddings,
# Mistral with an explicit head_dim and no sliding window (v0.3).
FAMILIES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(num_key_value_heads=2, tie_word_embeddings=False, use_sliding_window=False)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, sliding_window=None)),
}


def tiny_hf_family(path, family, seed=0, vocab_size=128, layers=2, shard=None, **overrides):
    """Save a random tiny checkpoint of `family` (FAMILIES, or "llama") made by transformers' own class;
    every norm weight and bias moved away from its init (1 and 0), so a model that ignores one fails.
    Returns it (fp32, eval mode)."""
    if family == "llama":
        return tiny_hf_llama(path, seed=seed, vocab_size=vocab_size, layers=layers, shard=shard)
    torch.manual_seed(seed)
    config_class, model_class, options = FAMILIES[family]
    config = config_class(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
                          bos_token_id=0, eos_token_id=1, **{**options, **overrides})
    config.rope_parameters = {"rope_type": "default", "rope_theta": 1000000.0}
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.uniform_(-0.5, 0.5)
    model.save_pretrained(str(path), max_shard_size=shard or "10GB")
    return model
