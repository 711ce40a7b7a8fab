"""The run fingerprint: everything that changes the math of a run, so that a run directory is never
continued with another configuration.

Stored as RUN_DIR/run.json when a run starts and inside every checkpoint (fingerprint.json). A rerun
into a directory holding a checkpoint must have the same fingerprint, or it is refused before any
process starts with each differing field as old -> new. What does not change the math may change:
logging, checkpoint cadence and retention, the data cache folder, progress display, activation
checkpointing (recomputation gives the same numbers).

Extending a run: epochs and max_steps are part of it, because the learning-rate schedule is computed
from the total number of steps, so a longer run is a different schedule from step 1. To train on,
start a new run from this one's weights: --model.path RUN_DIR/hf, or for a run that has not finished
`maskdpo export RUN_DIR -o DIR` (from its newest intact checkpoint) and --model.path DIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..digests import file_digest, library_versions, model_digest

FILE = "fingerprint.json"
RUN_FILE = "run.json"

# Sections and fields that do not change the math; every other config field is in the fingerprint.
FREE = {"checkpoint.every", "checkpoint.keep_last", "logging.run_dir", "logging.tensorboard", "data.cache_dir",
        "parallel.activation_checkpointing", "parallel.processes"}


def fingerprint(config, world_size: int) -> dict:
    """A flat {field: value} of the run's math, JSON-serialisable."""
    from ..data.bundled import BUNDLED_DATA
    from ..data.tokenizer import tokenizer_fingerprint

    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if name not in FREE:
                flat[name] = value
    m, d = config.model, config.data
    if m.path is not None:
        flat.pop("model.architecture")  # ignored: the model's own config.json decides
        flat["model.path"] = str(Path(m.path).resolve())
        flat["model.files"] = model_digest(m.path)
    flat["data.pairs"] = "bundled" if d.pairs == "bundled" else str(Path(d.pairs).resolve())
    flat["data.pairs_sha256"] = file_digest(BUNDLED_DATA / "annotated.jsonl" if d.pairs == "bundled" else d.pairs)
    tokenizer = d.tokenizer
    if tokenizer is None and m.path and (Path(m.path) / "tokenizer.json").exists():
        tokenizer = m.path
    flat["data.tokenizer_sha256"] = tokenizer_fingerprint(tokenizer)
    if config.parallel.deepspeed_config:
        flat["parallel.deepspeed_config_sha256"] = file_digest(config.parallel.deepspeed_config)
    # Checkpoints are written per pipeline stage and data-parallel rank: the layout must match.
    flat["parallel.world_size"] = world_size
    flat["maskdpo"] = library_versions()["maskdpo"]
    return json.loads(json.dumps(flat))  # tuples -> lists, as they read back


def differences(old: dict, new: dict) -> list[str]:
    """One line per differing field: "field: old -> new"."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "(unset)") != new.get(key, "(unset)"):
            lines.append(f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}")
    return lines


def write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
