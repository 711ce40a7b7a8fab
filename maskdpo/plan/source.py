"""What `maskdpo plan --model` names: a bundled model, an HF config.json or model directory, or a recipe."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..assets import MODELS
from ..model.architecture import Architecture

# Bundled published configs: name -> how reports call the model.
BUNDLED = {"llama3.1-8b": "Llama-3.1-8B", "llama3.1-70b": "Llama-3.1-70B", "qwen2.5-7b": "Qwen2.5-7B",
           "qwen3-8b": "Qwen3-8B"}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass(frozen=True)
class ModelSource:
    """The architecture and the recipe's training settings (None where a bare config gives none)."""

    config: Architecture
    """The architecture."""
    name: str
    """The model as reports call it."""
    token_budget: int | None = None
    """data.token_budget of a recipe."""
    checkpointing: bool | None = None
    """parallel.activation_checkpointing of a recipe."""
    partition: str | None = None
    """parallel.partition of a recipe."""
    head: str | None = None
    """model.head of a recipe."""
    batch_micro_batches: int | None = None
    """train.batch_pairs / train.micro_batch_pairs of a recipe: micro-batches per step over all data ranks."""


def _config_file(file: Path, name: str) -> Architecture:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a readable JSON config ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: not a Hugging Face config.json (expected a JSON object)")
    missing = [k for k in REQUIRED if k not in data]
    if missing:  # Architecture's defaults are Llama-3.1-8B's: a planned model must say what it is
        raise ValueError(f"{file}: not a Hugging Face model config.json: no {', '.join(missing)}")
    try:
        return Architecture.from_hf(data, where=str(file))
    except (TypeError, ValueError) as e:
        raise ValueError(' '.join(str(e).split())) from None


def _recipe(file: Path) -> ModelSource:
    from ..train.config import ConfigError, load_config

    try:
        recipe = load_config(file)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    p = recipe.parallel
    if not p.bf16:
        raise ValueError(f"{file}: parallel.bf16 is false; maskdpo plan models bf16 training with fp32 gradient "
                         "accumulation (the GPU recipes), not fp32 weights")
    if p.zero_stage != 1:
        raise ValueError(f"{file}: parallel.zero_stage is {p.zero_stage}; maskdpo plan models ZeRO-1")
    if recipe.model.path is not None:
        config_json = Path(recipe.model.path) / "config.json"
        if not config_json.is_file():
            raise ValueError(f"{file}: model.path {recipe.model.path} has no config.json here "
                             "(pass --model with the config.json or a bundled name instead)")
        config, name = _config_file(config_json, recipe.model.path), Path(recipe.model.path).name
    else:
        try:
            config = Architecture.from_architecture(recipe.model.architecture)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{file}: model.architecture: {' '.join(str(e).split())}") from None
        name = file.stem
    return ModelSource(config, name, recipe.data.token_budget, p.activation_checkpointing, p.partition,
                       recipe.model.head, recipe.train.batch_pairs // recipe.train.micro_batch_pairs)


def load_model(spec: str) -> ModelSource:
    """A bundled name (BUNDLED: llama3.1-8b, llama3.1-70b, qwen2.5-7b, qwen3-8b), a config.json, an HF
    model directory or a recipe YAML."""
    if spec.lower() in BUNDLED:
        return ModelSource(_config_file(MODELS / f"{spec.lower()}.json", spec), BUNDLED[spec.lower()])
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {spec}: directory without config.json (expected a Hugging Face model directory)")
        return ModelSource(_config_file(path / "config.json", spec), path.name)
    if not path.is_file():
        raise ValueError(f"--model {spec}: no such file or directory, and not a bundled model ({', '.join(BUNDLED)})")
    if path.suffix in (".yaml", ".yml"):
        return _recipe(path)
    return ModelSource(_config_file(path, spec), path.parent.name or path.stem)


def parse_bytes(text: str, option: str) -> int:
    """"80GB" (10^9), "80GiB" (2^30), "512MB", a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{option} {text!r}: expected a size such as 80GB or 80GiB")
    unit = (match.group(2) or "B").upper()
    scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
    value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise ValueError(f"{option} {text!r}: must be more than 0 bytes")
    return value
