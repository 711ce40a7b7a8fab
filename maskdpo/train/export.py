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

# DeepSpeed's pipeline layer files: layer_03-model_states.pt, or with tensor parallelism one per
# tensor rank, layer_03-model_01-model_states.pt (PipelineModule.ckpt_layer_path).
LAYER_FILE = re.compile(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt")


def checkpoint_tensors(path: Path, config) -> dict[str, torch.Tensor]:
    """Every policy tensor of a checkpoint directory under its HF name, whole: a tensor-parallel
    run's shards (one file per layer and tensor rank) concatenated in rank order along the dimension
    maskdpo.model.shards splits them on (contiguous shards: the whole tensor), a replicated tensor
    taken once after checking that every rank holds the same. A tied embedding used as the head
    appears once."""
    from ..model.hf import to_hf_name
    from ..model.pipeline import model_name
    from ..model.shards import OUTER_SPLITS, REPLICATED, SPLIT_DIM, full_shapes, splits

    layer_splits = splits(config)
    shards: dict[str, dict[int, torch.Tensor]] = {}
    for file in sorted(path.iterdir()):
        match = LAYER_FILE.fullmatch(file.name)
        if not match:
            continue
        index, rank = int(match.group(1)), int(match.group(2) or 0)
        for name, tensor in torch.load(file, map_location="cpu", weights_only=True).items():
            if name.startswith("embed_tokens.") and index > 0:
                continue  # the tied embedding used as the head: the same tensor as layer 0's
            shards.setdefault(f"{index}.{name}", {})[rank] = tensor
    if not shards:
        raise ValueError(f"{path} holds no model files (layer_NN-model_states.pt)")
    ranks = max(len(parts) for parts in shards.values())
    tensors = {}
    for pipe_name, parts in shards.items():
        if sorted(parts) != list(range(ranks)):
            raise ValueError(f"{path}: {pipe_name} has the files of tensor ranks {sorted(parts)}, not of all {ranks}")
        ours = model_name(pipe_name, config.num_hidden_layers)
        split = OUTER_SPLITS[ours] if ours in OUTER_SPLITS else layer_splits[ours.split(".", 2)[2]]
        ordered = [parts[r] for r in range(ranks)]
        if split == REPLICATED or ranks == 1:
            if any(not torch.equal(t, ordered[0]) for t in ordered[1:]):
                raise ValueError(f"{path}: {pipe_name} is replicated but differs between tensor ranks")
            whole = ordered[0]
        else:
            whole = torch.cat(ordered, SPLIT_DIM[split])
        tensors[to_hf_name(ours)] = whole
    layer, outer = full_shapes(config)  # what the model holds: nothing missing, every shape whole
    expected = {**{f"model.layers.{i}.{n}": shape for i in range(config.num_hidden_layers) for n, shape in layer.items()},
                **{to_hf_name(n): shape for n, shape in outer.items()}}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected.get(name):
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)} put together, the model {expected.get(name)}")
    return tensors


def export_checkpoint(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    from ..data.tokenizer import run_tokenizer_dir
    from ..model.hf import load_config, save_hf
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
    tensors = checkpoint_tensors(path, model_config)
    out = Path(out) if out is not None else run_dir / f"export-{path.name}"
    dtype = torch.bfloat16 if config_fp.get("parallel.bf16") else None
    save_hf(tensors, model_config, out, dtype=dtype)
    write_serving_files(out, model_dir, run_tokenizer_dir(config_fp.get("data.tokenizer"), config_fp.get("model.path")))
    return out
