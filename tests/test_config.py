"""Config files and overrides: types, unknown keys, docs."""

from pathlib import Path

import pytest

from maskdpo.train.config import Config, ConfigError, OptimConfig, field_docs, load_config

ROOT = Path(__file__).resolve().parents[1]

RECIPES = ["tiny-cpu", "llama3.1-8b-paper", "llama3.1-8b-authors", "llama3.1-70b", "qwen2.5-7b", "qwen3-8b"]
QWEN = {"qwen2.5-7b": "qwen2", "qwen3-8b": "qwen3"}  # recipe (and bundled config) -> model_type


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_load(recipe, tmp_path):
    from pathlib import Path

    from maskdpo.assets import MODELS

    # A stand-in model directory for validation (the 70B recipe: the published config's shapes).
    # The Qwen recipes: their published configs.
    published = "llama3.1-70b" if "70b" in recipe else recipe if recipe in QWEN else None
    (tmp_path / "config.json").write_text((MODELS / f"{published}.json").read_text() if published else "{}")
    (tmp_path / "pairs.jsonl").write_text("")
    config = load_config(Path(__file__).resolve().parents[1] / "launch" / "configs" / f"{recipe}.yaml",
                         ["--model.path", str(tmp_path), "--data.pairs", str(tmp_path / "pairs.jsonl")]
                         if recipe != "tiny-cpu" else [])
    if recipe in QWEN:  # the paper's values, and the layout maskdpo plan recommends for 8 x 80 GB
        from maskdpo.model.hf import load_config as load_model_config
        from maskdpo.plan.layouts import PlanInputs, plan, recommend

        assert (config.optim.lr, config.train.batch_pairs, config.train.epochs, config.data.max_length,
                config.loss.beta, config.optim.schedule) == (5e-6, 64, 3, 1024, 0.1, "cosine")
        config.validate(world_size=8)
        architecture = load_model_config(tmp_path)
        assert architecture.model_type == QWEN[recipe]
        inputs = PlanInputs(architecture, recipe, 8, 80 * 10 ** 9, tokens=config.data.token_budget, checkpointing=(True,),
                            batch_micro_batches=config.train.batch_pairs // config.train.micro_batch_pairs)
        best = recommend(plan(inputs))[0]
        p = config.parallel
        assert (best.tensor, best.pipeline, best.data) == (p.tensor_parallel, p.pipeline_stages, 8)
        assert p.activation_checkpointing and p.bf16
    assert isinstance(config.optim.lr, float) and config.optim.lr > 0
    if recipe == "llama3.1-8b-paper":
        assert (config.optim.lr, config.train.batch_pairs, config.train.epochs, config.data.max_length) == (5e-6, 64, 3, 1024)
        config.validate(world_size=8)
    if recipe == "llama3.1-8b-authors":
        assert (config.optim.lr, config.train.batch_pairs, config.optim.warmup_ratio) == (5e-7, 32, 0.03)
    if recipe == "llama3.1-70b":  # the planned layout: T=8 x P=4 on 32 GPUs, and it fits by the plan
        from maskdpo.model.hf import load_config as load_model_config
        from maskdpo.plan.layouts import PlanInputs, plan_layout

        assert (config.parallel.tensor_parallel, config.parallel.pipeline_stages) == (8, 4)
        config.validate(world_size=32)
        inputs = PlanInputs(load_model_config(tmp_path), "Llama-3.1-70B", 32, 80 * 10 ** 9,
                            tokens=config.data.token_budget,
                            batch_micro_batches=config.train.batch_pairs // config.train.micro_batch_pairs)
        assert plan_layout(inputs, 8, 4, 1, checkpointing=True).fits
        with pytest.raises(ConfigError, match="16 processes cannot form 8 tensor-parallel x 4 pipeline ranks|"
                                              "multiple of 32"):
            config.validate(world_size=16)


def test_file_then_overrides(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  lr: 5e-6\n  betas: [0.9, 0.95]\ntrain:\n  epochs: 2\n")
    config = load_config(file, ["--train.epochs", "4", "--loss.beta=0.2", "--model.path", "null"])
    assert config.optim.lr == 5e-6 and config.optim.betas == [0.9, 0.95]
    assert config.train.epochs == 4 and config.loss.beta == 0.2 and config.model.path is None


@pytest.mark.parametrize("text,message", [
    ("optim:\n  lr: [1]\n", "optim.lr must be float"),
    ("optimizer:\n  lr: 1.0\n", "unknown key 'optimizer.lr'; did you mean 'optim'?"),
    ("train:\n  epochs: true\n", "train.epochs must be an integer"),
    ("parallel:\n  bf16: 1\n", "parallel.bf16 must be true or false"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("optim: 3\n", "section 'optim' must be a mapping"),
])
def test_bad_files_name_the_file_and_key(tmp_path, text, message):
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(file)
    assert str(file) in str(error.value) and message in str(error.value)


def test_tensor_parallel_is_checked_before_launch():
    config = Config()
    config.model.architecture = {"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 3,
                                 "intermediate_size": 64}
    config.parallel.tensor_parallel = 2
    with pytest.raises(ConfigError, match="6 processes cannot form 2 tensor-parallel x 2 pipeline ranks"):
        config.parallel.pipeline_stages = 2
        config.validate(world_size=6)
    config.parallel.pipeline_stages = 1
    with pytest.raises(ConfigError, match="parallel.tensor_parallel: tensor_parallel 2 does not divide "
                                          "num_key_value_heads 3"):
        config.validate(world_size=2)
    config.model.architecture["num_key_value_heads"] = 2
    config.validate(world_size=2)
    assert config.data_parallel(8) == 4  # world = T x P x D
    config.model.head = "kernel"
    with pytest.raises(ConfigError, match="tensor_parallel 2 needs model.head: fused"):
        config.validate(world_size=2)


def test_cross_field_validation():
    config = Config()
    config.model.architecture = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1}
    config.validate(world_size=1)
    config.parallel.pipeline_stages = 2
    with pytest.raises(ConfigError, match="3 processes cannot form 2 pipeline stages: the process count must be a "
                                          "multiple of 2"):
        config.validate(world_size=3)
    config.parallel.pipeline_stages, config.data.token_budget = 1, 1000
    with pytest.raises(ConfigError, match="token_budget"):
        config.validate(world_size=1)


def test_every_field_is_documented():
    import dataclasses

    for section in dataclasses.fields(Config):
        docs = field_docs(section.default_factory)
        assert {f.name for f in dataclasses.fields(section.default_factory)} == set(docs), section.name
    assert "Peak learning rate" in field_docs(OptimConfig)["lr"]


def test_bf16_needs_zero_1_and_deepspeed_local_rank_is_ignored():
    from maskdpo.train.cli import _split_argv

    config = Config()
    config.model.architecture = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1}
    config.parallel.bf16, config.parallel.zero_stage = True, 0
    with pytest.raises(ConfigError, match="parallel.bf16 needs parallel.zero_stage 1"):
        config.validate(world_size=1)
    path, overrides, _ = _split_argv(["--local_rank=3", "--config", "x.yaml", "--local_rank", "2", "--optim.lr", "1"])
    assert path == "x.yaml" and overrides == ["--optim.lr", "1"]


def test_heads_and_renamed_keys(tmp_path):
    config = load_config(None, ["--model.head", "eager", "--model.architecture",
                                "{hidden_size: 8, num_attention_heads: 2, num_key_value_heads: 1}"])
    config.validate(world_size=1)
    config.model.head = "chunked"
    with pytest.raises(ConfigError, match="model.head must be one of fused, kernel, eager, not 'chunked'"):
        config.validate(world_size=1)
    file = tmp_path / "old.yaml"
    file.write_text("model:\n  fused_head: false\n")
    with pytest.raises(ConfigError, match=r"old.yaml: model.fused_head was replaced by model.head"):
        load_config(file)


@pytest.mark.parametrize("bf16,expected", [(False, "sdpa"), (True, "torch_varlen")])
def test_attention_is_resolved_for_the_real_dtype_on_cuda(bf16, expected):
    """What a CUDA run resolves, decided without a GPU: fp32 cannot run the flash kernels, so auto
    falls back to sdpa instead of stopping the run (the start-up crash of bf16: false)."""
    import torch

    from maskdpo.model.attention import available_backends
    from maskdpo.train.engine import resolve_attention

    cuda = torch.device("cuda")
    if "flash_attn" in available_backends(cuda, torch.bfloat16):
        expected = "flash_attn" if bf16 else expected
    assert resolve_attention("auto", cuda, bf16) == expected
    assert resolve_attention("sdpa", cuda, bf16) == "sdpa"
    if not bf16:
        with pytest.raises(ValueError, match="'torch_varlen' cannot run on cuda with torch.float32"):
            resolve_attention("torch_varlen", cuda, bf16)


def test_schedule_warms_up_then_follows_the_cosine():
    import math

    from maskdpo.train.schedule import lr_factor

    total, warmup = 100, 10  # warmup_ratio 0.1
    assert [lr_factor(s, total, 0.1) for s in range(3)] == pytest.approx([1 / 11, 2 / 11, 3 / 11])
    for s in (10, 40, 99):
        assert lr_factor(s, total, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    assert lr_factor(50, total, 0.1, "constant") == 1.0


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"num_hidden_layers": 2, "vocab_size": 64, "hidden_size": 16, '
                                                   '"intermediate_size": 32, "num_attention_heads": 2, '
                                                   '"num_key_value_heads": 1}')
    (tmp_path / "ds.json").write_text('{"train_batch_size": 8}')
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "zero0.json").write_text('{"zero_optimization": {"stage": 0}}')
    (tmp_path / "fp16.json").write_text('{"fp16": {"enabled": true}}')
    (tmp_path / "deferred.json").write_text('{"bf16": {"enabled": true, "immediate_grad_update": false}}')
    return tmp_path


@pytest.mark.parametrize("override,message", [
    (["--train.micro_batch_pairs", "0"], "train.micro_batch_pairs must be at least 1, got 0"),
    (["--parallel.processes", "-2"], "parallel.processes must be at least 1, got -2"),
    (["--train.max_steps", "-5"], "train.max_steps must be at least 1 (or null: epochs' worth), got -5"),
    (["--train.max_steps", "0"], "train.max_steps must be at least 1"),
    (["--optim.lr", ".inf"], "optim.lr must be a positive finite number, got inf"),
    (["--loss.beta", ".inf"], "loss.beta must be a positive finite number, got inf"),
    (["--optim.gradient_clipping", "-1"], "optim.gradient_clipping must be 0 (off) or a positive number, got -1"),
    (["--optim.betas", "[2, 3]"], "optim.betas must be two numbers in [0, 1), got [2, 3]"),
    (["--optim.betas", "[0.9]"], "optim.betas must be two numbers in [0, 1), got [0.9]"),
    (["--optim.weight_decay", "-1"], "optim.weight_decay must be 0 or more"),
    (["--model.attention", "foo"], "model.attention must be one of auto, flash_attn, torch_varlen, sdpa, not 'foo'"),
    (["--data.mask", "all"], "data.mask must be one of sentences, none, not 'all'"),
    (["--model.architecture", "{model_type: gemma2}"], "model.architecture: model_type 'gemma2' is not supported"),
    (["--parallel.partition", "foo"], "parallel.partition must be parameters, uniform or type:"),
    (["--model.architecture", "{hidden_size: 0}"], "model.architecture.hidden_size must be a positive integer, got 0"),
    (["--model.architecture", "{layers: 2}"], "model.architecture: unknown key 'layers'"),
    (["--model.architecture", "{num_attention_heads: 3, num_key_value_heads: 2}"],
     "num_attention_heads (3) must be a multiple of num_key_value_heads (2)"),
    (["--data.pairs", "/nonexistent/pairs.jsonl"], "data.pairs: /nonexistent/pairs.jsonl is not a file"),
    (["--parallel.deepspeed_config", "/nonexistent.json"], "parallel.deepspeed_config: /nonexistent.json is not a file"),
    (["--parallel.deepspeed_config", "{paths}/bad.json"], "not valid JSON"),
    (["--parallel.deepspeed_config", "{paths}/ds.json"], "may not set train_batch_size"),
    (["--parallel.deepspeed_config", "{paths}/zero0.json", "--parallel.bf16", "true"],
     "parallel.deepspeed_config: {paths}/zero0.json: zero_optimization.stage 0 with parallel.bf16: true"),
    (["--parallel.deepspeed_config", str(ROOT / "launch" / "ds_zero1_bf16.json")],
     f"parallel.deepspeed_config: {ROOT / 'launch' / 'ds_zero1_bf16.json'}: bf16.enabled true contradicts "
     "parallel.bf16: false"),
    (["--parallel.deepspeed_config", "{paths}/fp16.json"], "{paths}/fp16.json: fp16 is not supported"),
    (["--parallel.deepspeed_config", "{paths}/deferred.json", "--parallel.bf16", "true"],
     "{paths}/deferred.json: bf16.immediate_grad_update false: maskdpo runs with it on"),
    (["--data.tokenizer", "/nonexistent"], "data.tokenizer: /nonexistent is not a directory"),
    (["--data.max_length", "0"], "data.max_length must be at least 2, got 0"),
    (["--data.correct_labels", "ok", "--data.hallucinated_labels", "ok,bad"],
     "labels cannot be both correct and hallucinated: ['ok']"),
    (["--model.path", "{paths}/nothing"], "model.path: {paths}/nothing holds no config.json"),
    (["--parallel.pipeline_stages", "4", "--parallel.processes", "4"], "exceeds the model's 2 decoder layers"),
    (["--logging.run_dir", "{paths}/ds.json"], "exists and is not a directory"),
])
def test_every_field_is_checked_before_any_process_starts(paths, capsys, override, message):
    from pathlib import Path

    from maskdpo.train.cli import main

    recipe = Path(__file__).resolve().parents[1] / "launch" / "configs" / "tiny-cpu.yaml"
    override = [a.replace("{paths}", str(paths)) for a in override]
    message = message.replace("{paths}", str(paths))
    assert main(["--config", str(recipe), "--logging.run_dir", str(paths / "run"), *override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err  # one line
    assert not (paths / "run").exists()


def test_duplicate_yaml_keys_are_refused(tmp_path):
    file = tmp_path / "dup.yaml"
    file.write_text("optim:\n  lr: 1.0e-3\n  lr: 5.0e-4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'lr'"):
        load_config(file)
    file.write_text("optim:\n  lr: 1.0e-3\noptim:\n  warmup_ratio: 0\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'optim'"):
        load_config(file)


def test_the_run_fingerprint_holds_the_tensor_parallel_layout():
    """A run resumes only under the layout it started with: tensor_parallel is part of its fingerprint."""
    from maskdpo.train.fingerprint import fingerprint

    config = Config()
    config.parallel.tensor_parallel = 2
    one, two = fingerprint(Config(), 2), fingerprint(config, 2)
    assert (one["parallel.tensor_parallel"], two["parallel.tensor_parallel"]) == (1, 2)


def test_a_deepspeed_template_that_agrees_with_the_config_is_accepted(tmp_path):
    """The shipped template with parallel.bf16: true passes the checks the contradicting ones fail."""
    from maskdpo.train.validate import validate

    config = load_config(ROOT / "launch" / "configs" / "tiny-cpu.yaml",
                         ["--parallel.deepspeed_config", str(ROOT / "launch" / "ds_zero1_bf16.json"),
                          "--parallel.bf16", "true", "--logging.run_dir", str(tmp_path / "run")])
    validate(config, 2)
