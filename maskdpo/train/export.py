"""`maskdpo export RUN_DIR`: a Hugging Face model from a run's checkpoint, without starting a run.

For a run that has not finished (stopped, killed, or to be continued with another configuration):
the policy weights of the newest intact checkpoint (or --checkpoint step-N), verified against the
checkpoint's manifest, written as config.json + safetensors with the run's tokenizer, loadable by
transformers and usable as the model.path of a new run.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import fingerprint as fp
from .checkpointer import CHECKPOINTS, Checkpointer, step_dirs

LAYER_FILE = re.compile(r"layer_(\d+)-model_states\.pt")


def export_checkpoint(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    from ..data.tokenizer import run_tokenizer_dir
    from ..model.hf import load_config, save_hf
    from ..model.pipeline import hf_name
    from .serving_files import write_serving_files

    run_dir = Path(run_dir)
    state = fp.read(run_dir / fp.RUN_FILE)
    if state is None:
        raise ValueError(f"{run_dir} holds no {fp.RUN_FILE}: not a maskdpo run directory")
    if checkpoint is not None:
        path = run_dir / CHECKPOINTS / checkpoint
        problem = Checkpointer.problem(path) if path.is_dir() else f"{path} does not exist"
        if problem:
            raise ValueError(f"cannot export {path.name}: {problem}")
    else:  # the newest intact one, each candidate verified once
        latest = Checkpointer(run_dir, 1, 1).latest()
        candidates = ([latest] if latest else []) + [p for p in reversed(step_dirs(run_dir / CHECKPOINTS)) if p != latest]
        path = next((p for p in candidates if p.is_dir() and Checkpointer.problem(p) is None), None)
        if path is None:
            raise ValueError(f"{run_dir} has no intact checkpoint to export")
    config_fp = state["fingerprint"]
    model_dir = Path(config_fp["model.path"]) if config_fp.get("model.path") else run_dir / "init"
    model_config = load_config(model_dir)
    tensors = {}
    for file in sorted(path.iterdir()):
        match = LAYER_FILE.fullmatch(file.name)
        if not match:
            continue
        for name, tensor in torch.load(file, map_location="cpu", weights_only=True).items():
            pipe_name = f"{int(match.group(1))}.{name}"
            if name.startswith("embed_tokens.") and int(match.group(1)) > 0:
                continue  # the tied embedding used as the head: the same tensor as layer 0's
            tensors[hf_name(pipe_name, model_config.num_hidden_layers)] = tensor
    out = Path(out) if out is not None else run_dir / f"export-{path.name}"
    dtype = torch.bfloat16 if config_fp.get("parallel.bf16") else None
    save_hf(tensors, model_config, out, dtype=dtype)
    write_serving_files(out, model_dir, run_tokenizer_dir(config_fp.get("data.tokenizer"), config_fp.get("model.path")))
    return out
