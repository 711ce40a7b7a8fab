"""Training configuration: dataclasses whose fields carry their docs, YAML files, CLI overrides.

    config = load_config("launch/configs/tiny-cpu.yaml", ["--optim.lr", "5e-6", "--train.epochs", "1"])

Every key is checked: an unknown key or a wrong type is a ConfigError that says what to write
instead, and incompatible settings are refused by `Config.validate` before any process starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    path: str | None = None
    """Hugging Face model directory (Llama, Qwen2/2.5, Qwen3 or Mistral) to start from (config.json +
    safetensors); null: a random init."""
    architecture: dict = field(default_factory=dict)
    """Architecture fields (hidden_size, num_hidden_layers, ...) for a random init when path is null;
    without num_key_value_heads, one per attention head (as transformers reads a config.json)."""
    attention: str = "auto"
    """Attention backend: auto, flash_attn, torch_varlen or sdpa."""
    deterministic_attention: bool = False
    """flash-attn's deterministic backward (slower). Off, its backward on a GPU sums in an order that
    varies from run to run, so a resumed run matches one never stopped to rounding, not bitwise; on,
    bitwise (every other part of a step is deterministic). The CPU's sdpa is deterministic either
    way; with torch_varlen or sdpa on a GPU, torch's kernels decide (torch.use_deterministic_algorithms)."""
    head: str = "fused"
    """How the last stage makes the masked log-prob sums: fused (hidden states -> linear_sequence_logps
    in chunks, never the whole logits), kernel (full logits -> the sequence_logps kernel) or eager
    (full logits -> fp32 log_softmax in plain PyTorch: the baseline benchmarks compare against)."""


@dataclass
class DataConfig:
    pairs: str = "bundled"
    """Pairs JSONL (ours or the authors' format); "bundled" builds pairs from the example data."""
    tokenizer: str | None = None
    """Tokenizer directory; null: model.path when it holds tokenizer.json, else the bundled one."""
    max_length: int = 1024
    """Tokens per side (prompt + response); longer sides lose their tail (counted)."""
    token_budget: int = 4096
    """Tokens per packed micro-batch; every pair must fit."""
    eot: str = "always"
    """How each response's end-of-turn token counts: always (weight 1 on both sides, as the authors and
    TRL count it, so that nothing masked is plain DPO), last_sentence (the weight of the response's last
    sentence) or never. The token is the one the chat template writes after an assistant message."""
    mask: str = "sentences"
    """Which response tokens count: sentences (Mask-DPO: the chosen side's correct sentences, the
    rejected side's hallucinated ones) or none (nothing masked: every response token of both sides,
    through the end-of-turn token: plain DPO on the same pairs, the paper's "w/o mask")."""
    correct_labels: str | None = None
    """Comma-separated labels counted as correct; null: ok, nofact, no_hallucination."""
    hallucinated_labels: str | None = None
    """Comma-separated labels counted as hallucinated; null: contradictory, unverifiable, hallucination."""
    skip_invalid: bool = False
    """Skip invalid records (counted, written to a rejects file) instead of stopping at the first."""
    cache_dir: str = ".maskdpo-cache"
    """Where encoded pairs and reference log-probs are cached."""


@dataclass
class LossConfig:
    beta: float = 0.1
    """KL strength of DPO."""
    type: str = "sigmoid"
    """sigmoid, ipo or hinge."""
    label_smoothing: float = 0.0
    """Label smoothing of the sigmoid loss, in [0, 0.5)."""


@dataclass
class OptimConfig:
    lr: float = 5e-7
    """Peak learning rate (AdamW)."""
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Fraction of the steps with a linear warmup: w = int(warmup_ratio x steps) steps, step s
    (0-based) at (s + 1) / (w + 1) of optim.lr. The first step already trains (at 1/(w + 1)); the
    peak comes at step w. (transformers' linear warmup starts at 0: its first step does nothing.)"""
    schedule: str = "cosine"
    """After warmup: cosine (to 0) or constant."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clipping; 0 disables it."""


@dataclass
class TrainConfig:
    epochs: int = 3
    """Passes over the data."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; null: the epochs' worth."""
    batch_pairs: int = 32
    """Pairs per optimizer step over all data-parallel ranks: micro_batch_pairs x DP x accumulation."""
    micro_batch_pairs: int = 4
    """Pairs per packed micro-batch (at most; fewer if the token budget fills first)."""
    seed: int = 0
    """Seed for initialisation and data order."""


@dataclass
class ParallelConfig:
    pipeline_stages: int = 1
    """Pipeline stages; the processes are split into tensor_parallel x pipeline_stages x data-parallel ranks."""
    tensor_parallel: int = 1
    """Megatron-style tensor-parallel ranks per stage (adjacent ranks: keep them inside a node); must divide
    the attention heads, key/value heads and MLP width; needs model.head: fused. `maskdpo plan` sizes it."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0 or 1 with a pipeline)."""
    processes: int | None = None
    """On CPU, processes `maskdpo train` starts itself (gloo); null: one. Under torchrun or deepspeed
    the launcher decides."""
    bf16: bool = False
    """bf16 weights and compute with fp32 gradient accumulation."""
    activation_checkpointing: bool = False
    """Recompute decoder layers in the backward to save activation memory."""
    partition: str = "type:DecoderLayerPipe"
    """How layers split across stages: type:DecoderLayerPipe (equal decoder layers) or parameters."""
    deepspeed_config: str | None = None
    """JSON file merged over the generated DeepSpeed config (templates in launch/); null: none."""


@dataclass
class CheckpointConfig:
    every: int = 100
    """Save a checkpoint every this many steps (and always at the end)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted once a newer one is complete."""


@dataclass
class LoggingConfig:
    run_dir: str = "runs/maskdpo"
    """Run directory: metrics.jsonl, checkpoints/, plots, hf/ export."""
    tensorboard: bool = True
    """Write TensorBoard events when tensorboard is installed."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def data_parallel(self, world_size: int) -> int:
        return world_size // (self.parallel.pipeline_stages * self.parallel.tensor_parallel)

    def micro_batches_per_step(self) -> int:
        """Micro-batches of one optimizer step over all data-parallel ranks (accumulation x DP)."""
        return self.train.batch_pairs // self.train.micro_batch_pairs

    def accumulation_steps(self, world_size: int) -> int:
        return self.train.batch_pairs // (self.train.micro_batch_pairs * self.data_parallel(world_size))

    def validate(self, world_size: int) -> None:
        """Every check that can be made before a process starts (maskdpo.train.validate); raise
        ConfigError naming the field and saying what to change."""
        from .validate import validate

        validate(self, world_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_docs(section_type) -> dict[str, str]:
    """The docstrings under each field (the docs `maskdpo train --help-config` prints)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(section_type))
    docs, body = {}, tree.body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = following.value.value
    return docs


def _check_type(value, annotation, where: str):
    """Coerce a YAML/CLI value to the field's annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    kind = origin or annotation
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 5e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


# Keys that were renamed: what to write instead.
RENAMED = {"model.fused_head": "model.head (fused, kernel or eager; fused_head: false is head: kernel)",
           "data.count_eot": "data.eot (always, last_sentence or never; count_eot: true is eot: last_sentence)"}


def _set(config: Config, key: str, value, source: str) -> None:
    if key in RENAMED:
        raise ConfigError(f"{source}: {key} was replaced by {RENAMED[key]}")
    parts = key.split(".")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if len(parts) != 2 or parts[0] not in sections:
        guess = difflib.get_close_matches(parts[0], list(sections), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else f"; sections: {', '.join(sections)}"
        raise ConfigError(f"{source}: unknown key {key!r}{hint}")
    section = getattr(config, parts[0])
    hints = typing.get_type_hints(type(section))
    if parts[1] not in hints:
        guess = difflib.get_close_matches(parts[1], list(hints), n=1)
        hint = f"; did you mean {parts[0]}.{guess[0]}?" if guess else f"; keys: {', '.join(hints)}"
        raise ConfigError(f"{source}: unknown key {key!r}{hint}")
    setattr(section, parts[1], _check_type(value, hints[parts[1]], f"{source}: {key}"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{self.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then `--section.key value` overrides (values parsed as YAML)."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loader = _UniqueKeyLoader(path.read_text())
            loader.name = str(path)
            try:
                data = loader.get_single_data() or {}
            finally:
                loader.dispose()
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of sections (model:, data:, ...)")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping of keys")
            for key, value in values.items():
                _set(config, f"{section}.{key}", value, str(path))
    overrides = list(overrides or [])
    while overrides:
        flag = overrides.pop(0)
        if not flag.startswith("--") or "." not in flag:
            raise ConfigError(f"command line: expected --section.key VALUE, got {flag!r}")
        if "=" in flag:
            flag, text = flag.split("=", 1)
        elif overrides:
            text = overrides.pop(0)
        else:
            raise ConfigError(f"command line: {flag} needs a value")
        _set(config, flag[2:], yaml.safe_load(text), "command line")
    return config


def config_yaml(config: Config, width: int = 100) -> str:
    """The configuration as YAML with each field's documentation above it as a comment: what
    `maskdpo train --help-config` prints, a file `--config` reads back to the same configuration."""
    import textwrap

    lines = ["# maskdpo train configuration: every field, its value and what it does.",
             "# Save it, edit it and pass it as --config FILE; any field can also be given as --section.key VALUE."]
    for section in dataclasses.fields(Config):
        values = getattr(config, section.name)
        docs = field_docs(type(values))
        lines.append(f"{section.name}:")
        for f in dataclasses.fields(values):
            doc = " ".join(docs.get(f.name, "").split())
            lines += textwrap.wrap(doc, width, initial_indent="  # ", subsequent_indent="  # ")
            # Flow style keeps each field on one line; YAML spells None, True as null, true.
            dumped = yaml.safe_dump({f.name: getattr(values, f.name)}, default_flow_style=True, sort_keys=False,
                                    width=float("inf"), allow_unicode=True).strip()
            lines.append("  " + dumped[1:-1])  # without the mapping's braces
    return "\n".join(lines) + "\n"


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
