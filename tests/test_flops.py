"""The flop count against a hand count of a tiny Llama, and against the model's real parameters."""

from maskdpo.flops import non_embedding_params, peak_bf16_flops, training_flops_per_token
from maskdpo.model.architecture import Architecture
from maskdpo.model.llama import Llama


def test_flops_by_hand_and_parameter_count():
    config = Architecture(vocab_size=100, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    # per layer: q 8x8, k 8x4, v 8x4, o 8x8 = 192; mlp 3x8x12 = 288; two norms 16 -> 496; x2 + final norm 8
    assert non_embedding_params(config) == 2 * 496 + 8
    model = Llama(config)
    assert non_embedding_params(config) == sum(p.numel() for p in model.parameters()) - 100 * 8
    assert training_flops_per_token(config, 16) == 6 * (1000 + 800) + 12 * 2 * 8 * 16
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_bf16_flops("Tesla T4") is None
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12


def test_the_parameter_count_holds_the_family_extras():
    """Qwen2's q, k, v biases and Qwen3's q/k norms (hand count), against the model's real parameters."""
    shape = dict(vocab_size=100, hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=True)
    llama = non_embedding_params(Architecture(**shape))
    # biases: q 8 + k 4 + v 4 = 16 per layer; q/k norms: 2 x head_dim 4 = 8 per layer
    assert non_embedding_params(Architecture(model_type="qwen2", **shape)) == llama + 2 * 16
    assert non_embedding_params(Architecture(model_type="qwen3", **shape)) == llama + 2 * 8
    for family in ("qwen2", "qwen3", "mistral"):
        config = Architecture(model_type=family, **shape)
        model = Llama(config)
        assert non_embedding_params(config) == sum(p.numel() for p in model.parameters()) - 100 * 8, family
