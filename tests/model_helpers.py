"""Tiny Hugging Face Llama checkpoints built in code with transformers itself (no hub)."""

import torch
import transformers

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
