"""Ours vs theirs: our Llama and transformers' LlamaForCausalLM, same weights, same logits."""

import pytest
import torch
import transformers
from model_helpers import CONFIGS, tiny_hf_llama

from maskdpo.model.attention import available_backends, packed_causal_attention, resolve_backend
from maskdpo.model.hf import load_config, load_llama, save_llama

LENGTHS = [7, 1, 12, 5]


def packed_inputs(lengths, vocab, seed=1):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, vocab, (n,), generator=gen) for n in lengths]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])
    return seqs, torch.cat(seqs), positions, cu


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_packed_logits_match_transformers_per_sequence(tmp_path, variant):
    theirs = tiny_hf_llama(tmp_path, variant, shard="60KB")  # sharded safetensors with an index
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_llama(tmp_path)
    seqs, ids, positions, cu = packed_inputs(LENGTHS, theirs.config.vocab_size)
    with torch.no_grad():
        got = ours(ids, positions, cu)
        expected = torch.cat([theirs(s[None]).logits[0] for s in seqs])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_padded_batch_logits_match_transformers(tmp_path, variant):
    theirs = tiny_hf_llama(tmp_path, variant)
    ours = load_llama(tmp_path)
    seqs, ids, positions, cu = packed_inputs(LENGTHS, theirs.config.vocab_size, seed=2)
    width = max(LENGTHS)
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, :len(s)], mask[i, :len(s)] = s, 1
    with torch.no_grad():
        expected = theirs(batch, attention_mask=mask).logits[mask.bool()]
        got = ours(ids, positions, cu)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rope_scaling_matches_transformers_and_changes_frequencies(tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from maskdpo.model.llama import rope_inv_freq

    theirs = tiny_hf_llama(tmp_path)
    config = load_config(tmp_path)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](theirs.config)
    torch.testing.assert_close(rope_inv_freq(config), expected)
    config.rope_scaling = None
    assert not torch.allclose(rope_inv_freq(config), expected)


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_saved_checkpoint_loads_in_transformers(tmp_path, variant):
    tiny_hf_llama(tmp_path / "start", variant)
    ours = load_llama(tmp_path / "start")
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained": differs from the start
    save_llama(ours, tmp_path / "out", max_shard_bytes=50_000)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    seqs, ids, positions, cu = packed_inputs([9, 4], reloaded.config.vocab_size, seed=3)
    with torch.no_grad():
        expected = torch.cat([reloaded(s[None]).logits[0] for s in seqs])
        got = ours(ids, positions, cu)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert reloaded.config.tie_word_embeddings == CONFIGS[variant]["tie_word_embeddings"]


def test_attention_backends_agree_where_they_run():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(24, 4, 16, generator=gen).to(device)
    k, v = (torch.randn(24, 2, 16, generator=gen).to(device) for _ in range(2))
    cu = torch.tensor([0, 5, 5, 17, 24], dtype=torch.int32, device=device)  # an empty sequence too
    # Independent reference: one dense masked softmax per sequence, GQA by repeating heads.
    expected = torch.zeros_like(q)
    for a, b in [(0, 5), (5, 17), (17, 24)]:
        kk, vv = k[a:b].repeat_interleave(2, 1), v[a:b].repeat_interleave(2, 1)
        scores = torch.einsum("qhd,khd->hqk", q[a:b], kk) / 4.0
        scores = scores.masked_fill(torch.ones(b - a, b - a, dtype=torch.bool, device=device).triu(1), float("-inf"))
        expected[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)
    backends = available_backends(device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    for backend in backends:
        got = packed_causal_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu, 12, backend, 0.25)
        torch.testing.assert_close(got.float(), expected, rtol=2e-2 if dtype != torch.float32 else 1e-5,
                                   atol=2e-2 if dtype != torch.float32 else 1e-5, msg=backend)
    assert resolve_backend("auto", device) == backends[0]
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_backend("xformers", device)
    if device.type == "cpu":
        with pytest.raises(ValueError, match="cannot run on cpu"):
            resolve_backend("flash_attn", device)


def test_deterministic_attention_reaches_every_layer_and_repeats_bitwise(tmp_path):
    """model.deterministic_attention is set on every attention layer from outside; with it, each
    backend that runs here gives bitwise the same gradients run to run (on a GPU's flash-attn only
    with the flag: the GPU check runs this file)."""
    from maskdpo.model.llama import Attention, deterministic_attention

    tiny_hf_llama(tmp_path / "hf", vocab_size=64)
    model = load_llama(tmp_path / "hf")
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert not any(m.deterministic for m in layers)
    assert deterministic_attention(model) == len(layers) == load_config(tmp_path / "hf").num_hidden_layers
    assert all(m.deterministic for m in layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(40, 4, 16, generator=gen).to(device, dtype)
    k, v = (torch.randn(40, 2, 16, generator=gen).to(device, dtype) for _ in range(2))
    cu = torch.tensor([0, 9, 30, 40], dtype=torch.int32, device=device)
    grad = torch.randn(40, 4, 16, generator=gen).to(device, dtype)
    for backend in available_backends(device, dtype):
        runs = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            packed_causal_attention(*leaves, cu, 21, backend, 0.25, deterministic=True).backward(grad)
            runs.append([t.grad for t in leaves])
        assert all(torch.equal(a, b) for a, b in zip(*runs)), backend


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU (the GPU check runs this file)")
def test_labels_for_the_gpu_come_from_pinned_memory():
    """What the trainer hands DeepSpeed on a GPU: labels in page-locked memory, the same values."""
    from pipeline_data import micro_batches

    from maskdpo.data.batch import pipeline_tensors

    mb = micro_batches()[0][0]
    _, plain = pipeline_tensors(mb)
    _, pinned = pipeline_tensors(mb, pin=True)
    assert all(t.is_pinned() for t in pinned) and not any(t.is_pinned() for t in plain)
    assert all(torch.equal(a, b) for a, b in zip(plain, pinned))


def test_torch_varlen_is_chosen_only_when_varlen_attn_takes_our_arguments(caplog):
    from maskdpo.model.attention import varlen_unsupported, varlen_usable

    # Older torch signatures, written out: each lacks some of what packed_causal_attention passes.
    def varlen_attn_no_window(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None):
        pass

    def varlen_attn_no_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        pass

    def varlen_attn_self_only(query, key, value, cu_seq, max_seqlen, *, scale=None, window_size=(-1, -1),
                              enable_gqa=False):
        pass  # the keywords, but not the separate key boundaries and length we pass positionally

    def varlen_attn_full(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                         window_size=(-1, -1), enable_gqa=False):
        pass

    assert varlen_unsupported(varlen_attn_no_window, "2.10.0") == (
        "torch_varlen skipped: torch 2.10.0's varlen_attn has no 'window_size' or 'enable_gqa' argument")
    assert varlen_unsupported(varlen_attn_no_gqa, "2.11.0") == (
        "torch_varlen skipped: torch 2.11.0's varlen_attn has no 'enable_gqa' argument")
    assert varlen_unsupported(varlen_attn_self_only, "2.9.0") == (
        "torch_varlen skipped: torch 2.9.0's varlen_attn does not take our call: too many positional arguments")
    assert varlen_unsupported(varlen_attn_full, "2.13.0") is None

    with caplog.at_level("WARNING", logger="maskdpo.model.attention"):
        assert [varlen_usable(varlen_attn_no_gqa, "2.11.0") for _ in range(3)] == [False] * 3
        assert varlen_usable(varlen_attn_full, "2.13.0")
    assert [r.getMessage() for r in caplog.records] == [
        "torch_varlen skipped: torch 2.11.0's varlen_attn has no 'enable_gqa' argument"]  # once

    # This torch (2.13) has the whole signature; the answer needs no GPU.
    from torch.nn.attention.varlen import varlen_attn

    assert varlen_unsupported(varlen_attn, torch.__version__) is None
    assert "torch_varlen" in available_backends(torch.device("cuda"), torch.bfloat16)
    assert "torch_varlen" not in available_backends(torch.device("cuda"), torch.float32)


def test_rotary_frequencies_stay_fp32_in_a_bf16_model(tmp_path):
    tiny_hf_llama(tmp_path)
    model = load_llama(tmp_path).to(torch.bfloat16)
    from maskdpo.model.llama import rope_inv_freq

    for layer in model.layers:
        assert layer.rotary.inv_freq.dtype == torch.float32
        torch.testing.assert_close(layer.rotary.inv_freq, rope_inv_freq(model.config), rtol=0, atol=0)
    assert model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("key,value", [("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu")])
def test_unsupported_architectures_are_refused(tmp_path, key, value):
    import json

    tiny_hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{key}=.* is not supported"):
        load_llama(tmp_path)


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0}, {"type": "linear", "factor": 2.0},
                                     {"rope_type": "dynamic", "factor": 2.0}], ids=["yarn", "linear", "dynamic"])
def test_rope_scaling_kinds_the_model_does_not_implement_are_refused_by_name(tmp_path, scaling):
    import json

    tiny_hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("rope_parameters", None)
    config["rope_scaling"] = scaling
    (tmp_path / "config.json").write_text(json.dumps(config))
    kind = scaling.get("rope_type", scaling.get("type"))
    with pytest.raises(ValueError, match=f"config.json: rope_scaling rope_type='{kind}' is not supported"):
        load_config(tmp_path)


def test_a_config_without_key_value_heads_has_one_per_head_as_in_transformers(tmp_path):
    import json

    tiny_hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["num_key_value_heads"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.AutoConfig.from_pretrained(str(tmp_path))
    assert load_config(tmp_path).num_key_value_heads == theirs.num_key_value_heads == config["num_attention_heads"]
    from maskdpo.model.architecture import Architecture  # a recipe's model.architecture reads the same way

    architecture = {k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads")}
    assert Architecture.from_architecture(architecture).num_key_value_heads == theirs.num_key_value_heads


def test_checkpoint_tensors_without_a_place_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_llama(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(KeyError, match="no place for .*q_proj.bias"):
        load_llama(tmp_path)


def test_unknown_attention_backend_names_are_errors():
    q = torch.randn(4, 2, 8)
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        packed_causal_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4, "auto", 1.0)
