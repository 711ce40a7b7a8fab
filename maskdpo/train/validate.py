"""Every check of a training configuration that can be made before any process starts: types are
checked on load (config.py); here ranges, finiteness, paths, the model's architecture and the
parallel layout. The first problem is raised as a ConfigError naming the field and what to write.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

PARTITIONS = ("parameters", "uniform")  # or "type:<regex>" (DeepSpeed's partition methods)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _architecture(config, error):
    """The Architecture the run will build, from model.path's config.json or model.architecture."""
    from ..model.architecture import Architecture

    m = config.model
    if m.path is not None:  # model.architecture is then ignored (the command line says so)
        file = Path(m.path) / "config.json"
        if not file.is_file():
            error(f"model.path: {m.path} holds no config.json (a Hugging Face model directory)")
        try:
            return Architecture.from_hf(json.loads(file.read_text()), where=str(file))
        except (ValueError, TypeError) as e:
            error(f"model.path: {e}")
    keys = ("model_type", *Architecture.FIELDS, "sliding_window")  # what a recipe may describe
    unknown = sorted(set(m.architecture) - set(keys))
    if unknown:
        error(f"model.architecture: unknown key {unknown[0]!r}; keys: {', '.join(keys)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings"):
        value = m.architecture.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            error(f"model.architecture.{key} must be a positive integer, got {value!r}")
    try:
        arch = Architecture.from_architecture(m.architecture)
    except (ValueError, TypeError) as e:
        error(f"model.architecture: {e}")
    if arch.head_dim * arch.num_attention_heads != arch.hidden_size and "head_dim" not in m.architecture:
        error(f"model.architecture: hidden_size ({arch.hidden_size}) must be a multiple of num_attention_heads "
              f"({arch.num_attention_heads}), or give head_dim")
    if arch.head_dim % 2:
        error(f"model.architecture: head_dim ({arch.head_dim}) must be even (rotary embeddings)")
    return arch


def validate(config, world_size: int) -> None:
    from ..data.labels import LabelMap
    from ..data.masks import EOT_CHOICES, MASK_CHOICES
    from ..dpo.loss import LOSS_TYPES
    from ..dpo.objective import HEADS
    from ..model.architecture import check_window
    from ..model.attention import BACKENDS
    from ..model.shards import check_tensor_parallel
    from .engine import OWNED_KEYS, check_parallelism
    from .errors import ConfigError

    def error(message):
        raise ConfigError(message)

    def check(ok, message):
        if not ok:
            error(message)

    m, d, lo, o, t, p, c, g = (config.model, config.data, config.loss, config.optim, config.train, config.parallel,
                               config.checkpoint, config.logging)
    # model
    check(m.attention in ("auto", *BACKENDS), f"model.attention must be one of auto, {', '.join(BACKENDS)}, "
                                             f"not {m.attention!r}")
    check(m.head in HEADS, f"model.head must be one of {', '.join(HEADS)}, not {m.head!r}")
    check(m.path is not None or m.architecture, "model.path or model.architecture is needed")
    arch = _architecture(config, error)
    # data
    check(d.pairs == "bundled" or Path(d.pairs).is_file(), f"data.pairs: {d.pairs} is not a file (or write bundled)")
    if d.tokenizer is not None:
        check(Path(d.tokenizer).is_dir(), f"data.tokenizer: {d.tokenizer} is not a directory")
        check((Path(d.tokenizer) / "tokenizer.json").is_file(),
              f"data.tokenizer: {d.tokenizer} holds no tokenizer.json (masks need a fast tokenizer)")
    check(d.max_length >= 2, f"data.max_length must be at least 2, got {d.max_length}")
    try:
        check_window(arch, d.max_length)
    except ValueError as e:
        error(str(e))
    check(d.eot in EOT_CHOICES, f"data.eot must be one of {', '.join(EOT_CHOICES)}, not {d.eot!r}")
    check(d.mask in MASK_CHOICES, f"data.mask must be one of {', '.join(MASK_CHOICES)}, not {d.mask!r}")
    check(d.max_length * 2 <= d.token_budget,
          f"data.token_budget ({d.token_budget}) must hold a pair of max_length ({d.max_length}) sides")
    try:
        LabelMap.from_lists(d.correct_labels, d.hallucinated_labels)
    except ValueError as e:
        error(f"data.correct_labels / data.hallucinated_labels: {e}")
    check(bool(d.cache_dir), "data.cache_dir may not be empty")
    # loss
    check(lo.type in LOSS_TYPES, f"loss.type must be one of {', '.join(LOSS_TYPES)}, not {lo.type!r}")
    check(_finite(lo.beta) and lo.beta > 0, f"loss.beta must be a positive finite number, got {lo.beta}")
    check(0 <= lo.label_smoothing < 0.5, f"loss.label_smoothing must be in [0, 0.5), got {lo.label_smoothing}")
    # optim
    check(_finite(o.lr) and o.lr > 0, f"optim.lr must be a positive finite number, got {o.lr}")
    check(len(o.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in o.betas),
          f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    check(_finite(o.weight_decay) and o.weight_decay >= 0, f"optim.weight_decay must be 0 or more, got {o.weight_decay}")
    check(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    check(o.schedule in ("cosine", "constant"), f"optim.schedule must be cosine or constant, not {o.schedule!r}")
    check(_finite(o.gradient_clipping) and o.gradient_clipping >= 0,
          f"optim.gradient_clipping must be 0 (off) or a positive number, got {o.gradient_clipping}")
    # train
    for key in ("epochs", "batch_pairs", "micro_batch_pairs"):
        check(getattr(t, key) >= 1, f"train.{key} must be at least 1, got {getattr(t, key)}")
    check(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be at least 1 (or null: epochs' worth), "
                                                   f"got {t.max_steps}")
    check(t.seed >= 0, f"train.seed must be 0 or more, got {t.seed}")
    # parallel
    check(p.processes is None or p.processes >= 1, f"parallel.processes must be at least 1, got {p.processes}")
    check(p.partition in PARTITIONS or p.partition.startswith("type:"),
          f"parallel.partition must be parameters, uniform or type:<layer class regex>, not {p.partition!r}")
    try:
        dp = check_parallelism(p.pipeline_stages, p.zero_stage, world_size, p.tensor_parallel)
    except ValueError as e:
        error(f"parallel: {e}")
    if p.tensor_parallel > 1:
        try:
            check_tensor_parallel(arch, p.tensor_parallel)
        except ValueError as e:
            error(f"parallel.tensor_parallel: {e}")
        check(m.head == "fused", f"parallel.tensor_parallel {p.tensor_parallel} needs model.head: fused (the "
                                 f"vocabulary is split across tensor ranks), not {m.head!r}")
    check(p.pipeline_stages <= arch.num_hidden_layers,
          f"parallel.pipeline_stages ({p.pipeline_stages}) exceeds the model's {arch.num_hidden_layers} decoder layers")
    check(not (p.bf16 and p.zero_stage == 0), "parallel.bf16 needs parallel.zero_stage 1 (DeepSpeed accumulates "
                                             "bf16 gradients in fp32 only with ZeRO)")
    if t.batch_pairs % (t.micro_batch_pairs * dp):
        error(f"train.batch_pairs ({t.batch_pairs}) must be a multiple of train.micro_batch_pairs "
              f"({t.micro_batch_pairs}) x data-parallel ranks ({dp}); for example train.batch_pairs: "
              f"{max(1, t.batch_pairs // (t.micro_batch_pairs * dp)) * t.micro_batch_pairs * dp}")
    if p.deepspeed_config is not None:
        file = Path(p.deepspeed_config)
        check(file.is_file(), f"parallel.deepspeed_config: {file} is not a file")
        try:
            template = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            error(f"parallel.deepspeed_config: {file}: not valid JSON: {e}")
        check(isinstance(template, dict), f"parallel.deepspeed_config: {file}: must be a JSON object")
        owned = [k for k in OWNED_KEYS if k in template]
        check(not owned, f"parallel.deepspeed_config: {file}: may not set {', '.join(owned)} (they follow from "
                         "train.batch_pairs, train.micro_batch_pairs and the layout)")
        stage = template.get("zero_optimization", {}).get("stage", p.zero_stage)
        try:
            check_parallelism(p.pipeline_stages, stage, world_size, p.tensor_parallel)
        except ValueError as e:
            error(f"parallel.deepspeed_config: {file}: {e}")
        # The dtype is parallel.bf16's to decide: the model, the attention backend and the reference
        # pass follow it, so a template that says otherwise would be half obeyed.
        check(not (p.bf16 and stage == 0), f"parallel.deepspeed_config: {file}: zero_optimization.stage 0 with "
                                           "parallel.bf16: true (DeepSpeed accumulates bf16 gradients in fp32 only "
                                           "with ZeRO); use stage 1")
        bf16 = template.get("bf16", {}).get("enabled", False) if isinstance(template.get("bf16"), dict) else None
        check("bf16" not in template or bf16 == p.bf16,
              f"parallel.deepspeed_config: {file}: bf16.enabled {str(bf16).lower()} contradicts parallel.bf16: "
              f"{str(p.bf16).lower()} (the dtype is set with parallel.bf16, not in the template)")
        immediate = template["bf16"].get("immediate_grad_update", True) if isinstance(template.get("bf16"), dict) else True
        check(immediate is not False, f"parallel.deepspeed_config: {file}: bf16.immediate_grad_update false: maskdpo "
                                      "runs with it on (without it DeepSpeed loses the last pipeline stage's gradient "
                                      "of a tied embedding)")
        fp16 = template.get("fp16")
        fp16_on = fp16 is not None and not (isinstance(fp16, dict) and not fp16.get("enabled", False))
        check(not fp16_on, f"parallel.deepspeed_config: {file}: fp16 is not supported (bf16 is: parallel.bf16: true)")
    # checkpoint, logging
    check(c.every >= 1, f"checkpoint.every must be at least 1, got {c.every}")
    check(c.keep_last >= 1, f"checkpoint.keep_last must be at least 1, got {c.keep_last}")
    run_dir = Path(g.run_dir)
    check(bool(g.run_dir), "logging.run_dir may not be empty")
    check(not run_dir.exists() or run_dir.is_dir(), f"logging.run_dir: {run_dir} exists and is not a directory")
    existing = next((q for q in [run_dir, *run_dir.parents] if q.exists()), Path("."))
    check(os.access(existing, os.W_OK), f"logging.run_dir: {existing} is not writable (read-only file system "
                                        "or permissions)")
