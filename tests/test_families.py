"""Qwen2, Qwen3 and Mistral next to Llama: tiny checkpoints made by transformers' own classes (biases and
norm weights moved away from their init), read by our loader, against transformers in float64; what
a family does not implement refused by name; the export written back as the same family."""

import json

import pytest
import torch
import transformers
from model_helpers import FAMILIES, tiny_hf_family

from maskdpo.model.architecture import Architecture, check_window
from maskdpo.model.hf import load_config, load_llama, save_llama

LENGTHS = [7, 1, 12, 5]


def per_sequence_logps(logits, ids, lengths):
    """Each sequence's summed next-token log-probabilities (float64, plain torch)."""
    logp = torch.log_softmax(logits.double(), -1)
    out, start = [], 0
    for n in lengths:
        rows = torch.arange(start, start + n - 1)
        out.append(logp[rows, ids[rows + 1]].sum())
        start += n
    return torch.stack(out)


@pytest.mark.parametrize("family", [*FAMILIES, "llama"])
def test_float64_logits_and_sequence_sums_equal_transformers(tmp_path, family):
    theirs = tiny_hf_family(tmp_path, family, shard="60KB").double()
    config = load_config(tmp_path)
    assert config.model_type == family
    ours = load_llama(tmp_path, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 128, (n,), generator=gen) for n in LENGTHS]
    ids = torch.cat(seqs)
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in LENGTHS])
    with torch.no_grad():
        got = ours(ids, positions, cu)
        expected = torch.cat([theirs(s[None]).logits[0] for s in seqs])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_sequence_logps(got, ids, LENGTHS), per_sequence_logps(expected, ids, LENGTHS),
                               rtol=1e-12, atol=1e-12)
    # Every tensor of theirs has its place in ours, and the extras are really used: without the
    # biases or the q/k norms the logits differ.
    assert len(dict(ours.named_parameters())) == len([n for n in theirs.state_dict() if n != "lm_head.weight"
                                                      or not config.tie_word_embeddings])
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif "q_norm" in name or "k_norm" in name:
                p.fill_(1.0)
        if family in ("qwen2", "qwen3"):
            assert not torch.allclose(ours(ids, positions, cu), expected, atol=1e-3)


def test_the_families_differ_where_transformers_says_they_do(tmp_path):
    """Which tensors each family's layer holds (our table) equals transformers' own model's."""
    from maskdpo.model.shards import layer_tensors

    for family in [*FAMILIES, "llama"]:
        theirs = tiny_hf_family(tmp_path / family, family)
        layer = {n.removeprefix("model.layers.0."): tuple(p.shape) for n, p in theirs.named_parameters()
                 if n.startswith("model.layers.0.")}
        table = {n: shape for n, (shape, _) in layer_tensors(load_config(tmp_path / family)).items()}
        assert table == layer, family


@pytest.mark.parametrize("family", [*FAMILIES, "llama"])
def test_the_export_is_read_by_transformers_as_the_same_family(tmp_path, family):
    theirs = tiny_hf_family(tmp_path / "in", family)
    ours = load_llama(tmp_path / "in")
    save_llama(ours, tmp_path / "out")
    written, read = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("out", "in"))
    assert written["model_type"] == read["model_type"] == family
    assert written["architectures"] == read["architectures"] == [type(theirs).__name__]
    for key, value in read.items():  # every field as it was (the dtype is the saved weights')
        if key not in ("dtype", "torch_dtype", "transformers_version"):
            assert written[key] == value, key
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(again) is type(theirs)
    assert set(again.state_dict()) == set(theirs.state_dict())
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def write_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family,key,value", [
    ("qwen2", "use_sliding_window", True),
    ("qwen3", "use_sliding_window", True),
    ("qwen3", "attention_bias", True),
    ("qwen2", "hidden_act", "gelu"),
    ("mistral", "attention_dropout", 0.1),
])
def test_a_field_value_the_family_does_not_implement_is_refused_by_name(tmp_path, family, key, value):
    tiny_hf_family(tmp_path, family)
    write_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=f"config.json: {key}={value!r} is not supported for {family}"):
        load_config(tmp_path)


def test_sliding_attention_layers_and_other_model_types_are_refused(tmp_path):
    tiny_hf_family(tmp_path, "qwen2")
    write_config(tmp_path, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ValueError, match=r"config.json: layer_types holds \['sliding_attention'\]"):
        load_config(tmp_path)
    for model_type in ("qwen2_moe", "mixtral", "gemma2"):
        write_config(tmp_path, model_type=model_type, layer_types=None)
        with pytest.raises(ValueError, match=f"config.json: model_type '{model_type}' is not supported "
                                             r"\(only llama, qwen2, qwen3, mistral\)"):
            load_config(tmp_path)


def test_a_checkpoint_holding_tensors_its_family_lacks_is_refused(tmp_path):
    """A Qwen2 checkpoint (biases) whose config.json says qwen3: the biases have no place."""
    tiny_hf_family(tmp_path, "qwen2")
    write_config(tmp_path, model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    with pytest.raises(KeyError, match="a qwen3 model of this config.json has no place for .*k_proj.bias"):
        load_llama(tmp_path)


def test_a_mistral_window_no_shorter_than_the_sequences_is_the_same_model(tmp_path):
    """Mistral v0.1's 4096-token window, here 12 tokens: on sequences of at most 12 the window sees
    everything, so our full attention equals transformers' sliding-window model; shorter than the
    longest sequence is refused with both numbers."""
    theirs = tiny_hf_family(tmp_path, "mistral", sliding_window=12).double()
    config = load_config(tmp_path)
    assert config.sliding_window == 12
    ours = load_llama(tmp_path, dtype=torch.float64)
    ids = torch.randint(0, 128, (12,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, torch.arange(12), torch.tensor([0, 12], dtype=torch.int32)),
                                   theirs(ids[None]).logits[0], rtol=1e-12, atol=1e-12)
    check_window(config, 12)
    with pytest.raises(ValueError, match=r"data.max_length \(13\) is longer than the model's sliding_window \(12\)"):
        check_window(config, 13)
    # and the window really acts in transformers beyond it (so the refusal is needed)
    longer = torch.randint(0, 128, (20,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(longer, torch.arange(20), torch.tensor([0, 20], dtype=torch.int32))
        assert not torch.allclose(got[12:], theirs(longer[None]).logits[0, 12:], atol=1e-6)


def test_a_recipe_architecture_names_its_family():
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    assert Architecture.from_architecture({**shape, "model_type": "qwen3"}).qk_norm
    with pytest.raises(ValueError, match="model_type 'gemma' is not supported"):
        Architecture.from_architecture({**shape, "model_type": "gemma"})
    with pytest.raises(ValueError, match="sliding_window .* is not a field of qwen2"):
        Architecture.from_architecture({**shape, "model_type": "qwen2", "sliding_window": 4096})


@pytest.mark.parametrize("family", [*FAMILIES, "llama"])
def test_a_config_json_that_leaves_fields_out_means_what_transformers_reads(tmp_path, family):
    """Only the sizes given: head_dim (Qwen3's 128), the window (Mistral's 4096), the context length,
    rope theta, eps, special tokens and tying default as transformers' own config class of the family
    defaults them; and the export, read back by transformers, is the same config. rope_parameters
    wins over a stale top-level rope_theta, as in transformers."""
    # 32 heads: Qwen's default key/value heads (32) and Mistral's (8) divide them, as Llama's (one per head)
    minimal = {"model_type": family, "vocab_size": 128, "hidden_size": 256, "intermediate_size": 96,
               "num_hidden_layers": 2, "num_attention_heads": 32}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "config.json").write_text(json.dumps(minimal))
    theirs = transformers.AutoConfig.from_pretrained(str(tmp_path / "in"))
    ours = load_config(tmp_path / "in")
    keys = ("head_dim", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
            "tie_word_embeddings", "num_key_value_heads")
    assert {k: getattr(ours, k) for k in keys} == {k: getattr(theirs, k, None) or ours.hidden_size // 32
                                                   if k == "head_dim" else getattr(theirs, k) for k in keys}
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]
    if family == "mistral":  # transformers' 4096 when the key is absent (the others have no window field)
        assert ours.sliding_window == theirs.sliding_window == 4096
    from maskdpo.model.llama import Llama

    save_llama(Llama(ours), tmp_path / "out")
    again = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))

    def head_dim(config):  # what the family's modeling code uses (Qwen2's config has no head_dim of its own)
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    assert head_dim(again) == head_dim(theirs)
    for key in (*keys[1:], "sliding_window", "rope_parameters", "model_type"):
        assert getattr(again, key, None) == getattr(theirs, key, None), key
    both = {**minimal, "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    (tmp_path / "in" / "config.json").write_text(json.dumps(both))
    assert load_config(tmp_path / "in").rope_theta == transformers.AutoConfig.from_pretrained(
        str(tmp_path / "in")).rope_parameters["rope_theta"] == 500000.0
