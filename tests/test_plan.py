"""maskdpo plan and the tensor-parallel shard rule (maskdpo.model.shards): the shard rule against
torch.tensor_split and the real model's parameters; the plan's weight, gradient and optimizer bytes
against what DeepSpeed really allocates in CPU runs; the command's output and errors."""

import json
import os
import socket
import subprocess
import sys
from math import prod
from pathlib import Path

import pytest
import torch
import transformers

from maskdpo.cli import main
from maskdpo.model.architecture import Architecture
from maskdpo.model.llama import Llama
from maskdpo.model.shards import (
    EMBEDDING,
    LM_HEAD,
    REPLICATED,
    check_tensor_parallel,
    rank_shapes,
    shard_slice,
    splits,
    stage_shapes,
    stages,
)
from maskdpo.plan import state_bytes

TESTS = Path(__file__).resolve().parent


def hf_config(tied=False, vocab_size=1001, **overrides):
    options = dict(vocab_size=vocab_size, hidden_size=72, intermediate_size=96, num_hidden_layers=3,
                   num_attention_heads=12, num_key_value_heads=6, tie_word_embeddings=tied, max_position_embeddings=256)
    return transformers.LlamaConfig(**{**options, **overrides})


@pytest.mark.parametrize("tied", [False, True])
def test_unsharded_shapes_are_the_models_parameters(tied):
    config = Architecture.from_hf(hf_config(tied).to_dict())
    ours = {n: tuple(p.shape) for n, p in Llama(config).named_parameters()}
    shapes = rank_shapes(config, 1, 0)
    planned = {**{f"layers.{i}.{n}": s for i in range(config.num_hidden_layers) for n, s in shapes.layer.items()},
               **shapes.embedding, **shapes.norm, **shapes.head}
    assert planned == ours
    # and Hugging Face's own model has as many parameters (a tied head counted once)
    hf = transformers.LlamaForCausalLM(hf_config(tied))
    assert sum(p.numel() for p in hf.parameters()) == sum(prod(s) for s in ours.values())


@pytest.mark.parametrize("tp", [2, 3, 6])
def test_shards_tile_every_parameter_as_tensor_split_does(tp):
    config = Architecture.from_hf(hf_config().to_dict())  # vocabulary 1001: no T here divides it
    full = rank_shapes(config, 1, 0)
    per_rank = [rank_shapes(config, tp, r) for r in range(tp)]
    model = Llama(config)
    params = dict(model.named_parameters())
    for group in ("layer", "embedding", "norm", "head"):
        for name, shape in getattr(full, group).items():
            split = splits(config)[name]
            shards = [getattr(r, group)[name] for r in per_rank]
            if split == REPLICATED:
                assert shards == [shape] * tp
                continue
            tensor = params[f"layers.0.{name}" if group == "layer" else name].detach()
            dim = 1 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0
            expected = torch.tensor_split(tensor, tp, dim=dim)
            assert [tuple(e.shape) for e in expected] == shards, name
            slices = [shard_slice(split, shape, tp, r) for r in range(tp)]
            assert all(s[0] == dim for s in slices)
            assert torch.equal(torch.cat([tensor.narrow(dim, a, b - a) for _, a, b in slices], dim), tensor)
    # the vocabulary: first V % T ranks hold one row more, no padding
    rows = [r.embedding[EMBEDDING][0] for r in per_rank]
    assert sum(rows) == 1001 and max(rows) - min(rows) <= 1 and rows == sorted(rows, reverse=True)
    assert all(r.head[LM_HEAD][0] == e for r, e in zip(per_rank, rows))


@pytest.mark.parametrize("name", ["llama3.1-8b", "qwen2.5-7b", "qwen3-8b"])
def test_bundled_configs_count_what_transformers_builds(name):
    """The published configs of each family: every stage's and tensor rank's parameters add up to the
    parameters of transformers' own model class built from the same config.json (on the meta device;
    Qwen2's biases and Qwen3's q/k norms included), under the same names and shapes."""
    from maskdpo.plan.source import load_model

    config = load_model(name).config
    data = json.loads((TESTS.parent / f"maskdpo/assets/models/{name}.json").read_text())
    with torch.device("meta"):
        theirs = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**data))
    assert type(theirs).__name__ == config.family.hf_class
    expected = {n: tuple(p.shape) for n, p in theirs.named_parameters()}
    from maskdpo.model.hf import to_hf_name

    for tp in (1, 2, 4):
        planned = {}
        for stage in stages(config, 2):
            for rank in range(tp):
                for n, shape in stage_shapes(config, stage, tp, rank).items():
                    planned.setdefault(to_hf_name(n), []).append(shape)
        assert set(planned) == set(expected)
        for n, shapes in planned.items():  # a split tensor's shards add up to it; a replicated one is whole
            if len(set(shapes)) == 1 and shapes[0] == expected[n]:
                continue
            assert sum(prod(s) for s in shapes) == prod(expected[n]), n


def test_tensor_parallel_must_divide_heads_kv_heads_and_mlp():
    seventy_b = Architecture.from_hf(json.loads((TESTS.parent / "maskdpo/assets/models/llama3.1-70b.json").read_text()))
    with pytest.raises(ValueError) as e:
        check_tensor_parallel(seventy_b, 16, "Llama-3.1-70B")
    assert str(e.value) == "tensor_parallel 16 does not divide num_key_value_heads 8 of Llama-3.1-70B's config"
    check_tensor_parallel(seventy_b, 8)
    config = Architecture.from_hf(hf_config().to_dict())
    with pytest.raises(ValueError, match="does not divide num_attention_heads 12"):
        rank_shapes(config, 5, 0)
    with pytest.raises(ValueError, match="does not divide intermediate_size 100"):
        check_tensor_parallel(Architecture.from_hf(hf_config(num_key_value_heads=12, num_attention_heads=12,
                                                            intermediate_size=100).to_dict()), 12)


# --- the plan's model-state bytes against a real CPU run ---------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_checkpoint(path, tied, seed, heads=3, vocab=4096):
    """A tiny HF Llama whose hidden size (18) is 2 mod 4, so that the stages' parameter counts are not
    multiples of the optimizer's alignment and its padding shows. heads=2 (key/value heads 2, hidden 20
    for an even rotary dimension) and an odd vocabulary for the tensor-parallel scenarios."""
    torch.manual_seed(seed)
    kv = heads if tied or heads == 2 else 1
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=18 if heads == 3 else 20, intermediate_size=30,
                                      num_hidden_layers=2,
                                      num_attention_heads=heads, num_key_value_heads=kv,
                                      max_position_embeddings=512, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    return path


SCENARIOS = ("pp2-untied", "pp2-tied", "pp1-untied", "pp1-tied", "tp2-pp1-untied", "tp2-pp1-tied")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    untied, tied = tiny_checkpoint(root / "untied", False, 0), tiny_checkpoint(root / "tied", True, 1)
    tp_untied = tiny_checkpoint(root / "tp-untied", False, 2, heads=2, vocab=4093)
    tp_tied = tiny_checkpoint(root / "tp-tied", True, 3, heads=2, vocab=4093)
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0", "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(TESTS / "plan_worker.py"),
               "--hf", str(untied), "--hf-tied", str(tied), "--hf-tp", str(tp_untied), "--hf-tp-tied", str(tp_tied),
               "--out", str(out), "--scenarios", *SCENARIOS]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {"untied": untied, "tied": tied, "tp-untied": tp_untied, "tp-tied": tp_tied, "out": out}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_plan_state_bytes_equal_what_deepspeed_allocates(measured, scenario):
    tensor_parallel = int(scenario.split("-")[0][2:]) if scenario.startswith("tp") else 1
    pp, tying = int(scenario.split("-")[-2][2:]), scenario.split("-")[-1]
    checkpoint = measured[f"tp-{tying}" if tensor_parallel > 1 else tying]
    config = Architecture.from_hf(json.loads((checkpoint / "config.json").read_text()))
    padding_seen = False
    for rank in range(2):
        got = json.loads((measured["out"] / f"{scenario}-rank{rank}.json").read_text())
        assert got["optimizer"] == "BF16_Optimizer" and got["weight_dtypes"] == ["torch.bfloat16"]
        assert got["grad_dtypes"] == []  # every bf16 gradient already moved into the fp32 buffer and freed
        assert got["data_parallel"] == 2 // (pp * tensor_parallel)
        stage = stages(config, pp)[got["stage"]]
        shapes = stage_shapes(config, stage, tensor_parallel, got["tp_rank"])  # this rank's shards
        assert sorted(shapes) == got["names"]  # the stage holds exactly the planned parameters
        planned = state_bytes(sum(prod(s) for s in shapes.values()), got["data_parallel"])
        assert planned.parameters == got["parameters"]
        for term in ("weights", "grad_bf16", "grad_fp32", "master", "moments"):
            assert getattr(planned, term) == got[term], (scenario, rank, term)
        padding_seen |= planned.parameters % (2 * got["data_parallel"]) != 0
    # D = 2: the parameter count is not a multiple of 2·D, so the padding is part of what matched
    if pp == 1 and tensor_parallel == 1:
        assert padding_seen


# --- the command -------------------------------------------------------------------------------------

def run_plan(capsys, *args):
    status = main(["plan", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_json_output_and_the_70b_layouts(capsys):
    status, out, _ = run_plan(capsys, "--model", "llama3.1-70b", "--gpus", "32", "--gpu-memory", "80GB",
                              "--token-budget", "8192", "--json")
    assert status == 0
    data = json.loads(out)
    rows = data["layouts"]
    assert {(r["tensor"], r["pipeline"], r["data"]) for r in rows} >= {(8, 4, 1), (1, 1, 32), (16, 2, 1)}
    recommended = [r for r in rows if r["recommended"]]
    assert recommended and all(r["fits"] and r["tensor"] * r["pipeline"] >= 16 for r in recommended)
    # 70.6e9 parameters x (2 weights + 6 gradients + 12 / D optimizer) bytes over T·P GPUs: below 16 GPUs
    # per replica the model states alone exceed 80 GB
    assert all(not r["fits"] for r in rows if r["tensor"] * r["pipeline"] < 16)
    t16 = next(r for r in rows if r["tensor"] == 16)
    assert t16["reason"] == "tensor_parallel 16 does not divide num_key_value_heads 8 of Llama-3.1-70B's config"
    nodes = next(r for r in rows if r["tensor"] == 32)
    assert "does not divide" in nodes["reason"]


def test_70b_on_16_gpus_needs_more_than_80gb_and_says_why(capsys):
    status, out, _ = run_plan(capsys, "--model", "llama3.1-70b", "--gpus", "16", "--gpu-memory", "80GB", "--json")
    rows = json.loads(out)["layouts"]
    assert status == 0 and not any(r["fits"] for r in rows)
    best = min((r for r in rows if r["total"] is not None), key=lambda r: r["total"])
    # the nearest layouts use all 16 GPUs for one replica (D = 1): nothing left to partition the optimizer over
    assert best["tensor"] >= 4 and best["data"] == 1 and "weights + gradients + optimizer state" in best["reason"]


def test_table_names_recommendation_and_reasons(capsys):
    status, out, _ = run_plan(capsys, "--model", "llama3.1-8b", "--gpus", "8", "--gpu-memory", "80GB",
                              "--token-budget", "8192", "--activation-checkpointing", "off")
    assert status == 0
    assert "recommended (without activation checkpointing)" in out
    assert "no: stage 0: activations" in out and "assumptions:" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 10 and {r[3] for r in rows} == {"off"}  # the 10 layouts of 8 GPUs, the requested setting only


@pytest.mark.parametrize("args, message", [
    (["--model", "no/such/config.json", "--gpus", "8", "--gpu-memory", "80GB"], "--model no/such/config.json: no such file"),
    (["--model", "llama3.1-8b", "--gpus", "8", "--gpu-memory", "80XB"], "--gpu-memory '80XB': expected a size"),
    (["--model", "llama3.1-8b", "--gpus", "0", "--gpu-memory", "80GB"], "--gpus must be at least 1, got 0"),
    (["--model", "llama3.1-8b", "--gpus", "8", "--gpu-memory", "4GB"], "--reserve 4GB leaves nothing"),
    (["--model", str(TESTS.parent / "launch/configs/tiny-cpu.yaml"), "--gpus", "2", "--gpu-memory", "80GB"],
     "tiny-cpu.yaml: parallel.bf16 is false"),
    (["--model", str(TESTS.parent / "launch/configs/llama3.1-8b-paper.yaml"), "--gpus", "8", "--gpu-memory", "80GB"],
     "llama3.1-8b-paper.yaml: model.path /models/Llama-3.1-8B-Instruct has no config.json here"),
])
def test_bad_input_is_one_line_naming_it(capsys, args, message):
    status, out, err = run_plan(capsys, *args)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_bad_config_files_are_named(capsys, tmp_path):
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "broken.json").write_text("{")
    for name, message in (("empty.json", "not a Hugging Face model config.json: no vocab_size"),
                          ("broken.json", "not a readable JSON config")):
        status, _, err = run_plan(capsys, "--model", str(tmp_path / name), "--gpus", "8", "--gpu-memory", "80GB")
        assert status == 2 and f"{tmp_path / name}: {message}" in err and err.count("\n") == 1, err


def test_recipe_supplies_budget_checkpointing_and_accumulation(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  architecture: {vocab_size: 4096, hidden_size: 64, intermediate_size: 128, "
                      "num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 2}\n"
                      "data: {token_budget: 1024}\ntrain: {batch_pairs: 8, micro_batch_pairs: 2}\n"
                      "parallel: {pipeline_stages: 2, bf16: true, activation_checkpointing: true}\n")
    status, out, _ = run_plan(capsys, "--model", str(recipe), "--gpus", "8", "--gpu-memory", "1GB", "--reserve", "0.1GB",
                              "--json")
    data = json.loads(out)
    assert status == 0 and data["token_budget"] == 1024
    assert {r["checkpointing"] for r in data["layouts"]} == {True}
    # 4 micro-batches per step: D = 8 does not divide them
    d8 = next(r for r in data["layouts"] if r["data"] == 8)
    assert "8 data-parallel ranks do not divide the step's 4 micro-batches" in d8["reason"]


@pytest.mark.slow  # a subprocess of the CLI
def test_plan_command_prints_the_table_and_nothing_else():
    """A CPU machine: DeepSpeed (imported for its partition function) is told it is the CPU, so no
    accelerator-detection warning joins the plan's output."""
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    result = subprocess.run([sys.executable, "-m", "maskdpo.cli", "plan", "--model", "llama3.1-8b", "--gpus", "8",
                             "--gpu-memory", "80GB"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Llama-3.1-8B on 8 x 80 GB") and "recommended" in result.stdout
    assert result.stderr == ""


def test_the_q_and_k_norms_activations_are_planned_per_head():
    """Qwen3's per-head norms keep, per token and head, what an RMSNorm of head_dim keeps: the layer's
    planned bytes grow by exactly that over the same shapes without them (Qwen2's biases add none)."""
    from maskdpo.plan.memory import layer_activation_bytes, norm_saved_bytes

    shape = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128)
    for t in (1, 2, 8):
        llama = layer_activation_bytes(Architecture(**shape), t)
        assert layer_activation_bytes(Architecture(model_type="qwen2", **shape), t) == llama
        qwen3 = layer_activation_bytes(Architecture(model_type="qwen3", **shape), t)
        assert qwen3 - llama == (32 + 8) // t * norm_saved_bytes(128) == (32 + 8) // t * (4 * 128 + 4 + 2 * 128)
