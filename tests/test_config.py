"""Config files and overrides: types, unknown keys, docs."""

import pytest

from maskdpo.train.config import Config, ConfigError, OptimConfig, field_docs, load_config

RECIPES = ["tiny-cpu", "llama3.1-8b-paper", "llama3.1-8b-authors"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_load(recipe, tmp_path):
    from pathlib import Path

    (tmp_path / "config.json").write_text("{}")  # a stand-in model directory for validation
    config = load_config(Path(__file__).resolve().parents[1] / "launch" / "configs" / f"{recipe}.yaml",
                         ["--model.path", str(tmp_path)] if "8b" in recipe else [])
    assert isinstance(config.optim.lr, float) and config.optim.lr > 0
    if recipe == "llama3.1-8b-paper":
        assert (config.optim.lr, config.train.batch_pairs, config.train.epochs, config.data.max_length) == (5e-6, 64, 3, 1024)
        config.validate(world_size=8)
    if recipe == "llama3.1-8b-authors":
        assert (config.optim.lr, config.train.batch_pairs, config.optim.warmup_ratio) == (5e-7, 32, 0.03)


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


def test_cross_field_validation():
    config = Config()
    config.model.architecture = {"hidden_size": 8}
    config.validate(world_size=1)
    config.parallel.pipeline_stages = 2
    with pytest.raises(ConfigError, match="must be a multiple of pipeline_stages"):
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
    config.model.architecture = {"hidden_size": 8}
    config.parallel.bf16, config.parallel.zero_stage = True, 0
    with pytest.raises(ConfigError, match="parallel.bf16 needs parallel.zero_stage 1"):
        config.validate(world_size=1)
    path, overrides, _ = _split_argv(["--local_rank=3", "--config", "x.yaml", "--local_rank", "2", "--optim.lr", "1"])
    assert path == "x.yaml" and overrides == ["--optim.lr", "1"]


def test_heads_and_renamed_keys(tmp_path):
    config = load_config(None, ["--model.head", "eager", "--model.architecture", "{hidden_size: 8}"])
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
