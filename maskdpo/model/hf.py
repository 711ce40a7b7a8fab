"""Hugging Face checkpoints of every family (maskdpo.model.architecture): config.json + (sharded)
safetensors, read and written.

Our blocks keep HF's parameter names inside each block, and the four families share HF's layout
(what a family's layer holds is maskdpo.model.shards.layer_tensors), so names map by prefix:
  embedding.embed_tokens.weight  <-> model.embed_tokens.weight
  layers.{i}.<rest>              <-> model.layers.{i}.<rest>
  head.norm.weight               <-> model.norm.weight
  head.lm_head.weight            <-> lm_head.weight   (absent with tied embeddings)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .architecture import Architecture
from .llama import Llama
from .shards import layer_tensors

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def to_hf_name(name: str) -> str:
    if name.startswith("embedding."):
        return "model." + name[len("embedding."):]
    if name.startswith("layers."):
        return "model." + name
    if name == "head.norm.weight":
        return "model.norm.weight"
    if name == "head.lm_head.weight":
        return "lm_head.weight"
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def load_config(path: str | Path) -> Architecture:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json (expected a Hugging Face model directory)")
    return Architecture.from_hf(json.loads(file.read_text()), where=str(file))


def tensor_files(path: str | Path) -> dict[str, str]:
    """Each tensor's name in the checkpoint -> the safetensors file (in `path`) that holds it."""
    path = Path(path)
    if (path / INDEX).is_file():
        return dict(json.loads((path / INDEX).read_text())["weight_map"])
    if (path / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(path / SINGLE), "pt") as f:
            return {name: SINGLE for name in f.keys()}
    raise FileNotFoundError(f"{path}: no {SINGLE} or {INDEX}")


def load_hf_tensor_names(path: str | Path) -> list[str]:
    path = Path(path)
    if (path / INDEX).is_file():
        return list(json.loads((path / INDEX).read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(str(path / SINGLE), "pt") as f:
        return list(f.keys())


def checkpoint_names(config: Architecture) -> set[str]:
    """Every tensor a checkpoint of this architecture may hold (a pipeline stage loads only its own);
    anything else, such as biases a family does not have, means an architecture this model would
    silently get wrong. lm_head.weight may be saved even when tied; old checkpoints kept inv_freq."""
    layer = [*layer_tensors(config), "self_attn.rotary_emb.inv_freq"]
    return {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            *(f"model.layers.{i}.{name}" for i in range(config.num_hidden_layers) for name in layer)}


def load_state_dict(module: torch.nn.Module, path: str | Path, name_map=to_hf_name) -> None:
    """Copy an HF checkpoint into `module` (names mapped by `name_map`); every parameter must be found.

    Tensor by tensor (safetensors' safe_open): a process never holds more than its own parameters
    plus one tensor, and a tensor-parallel shard (a parameter with `tp_slice`, maskdpo.model.
    tensor_parallel) reads only its rows or columns of the checkpoint's tensor."""
    from safetensors import safe_open

    path = Path(path)
    files = tensor_files(path)
    config = load_config(path)
    unexpected = sorted(set(files) - checkpoint_names(config))
    if unexpected:
        raise KeyError(f"{path}: checkpoint holds tensors a {config.model_type} model of this config.json has "
                       f"no place for (an unsupported architecture?): {', '.join(unexpected[:5])}")
    params = dict(module.named_parameters())
    wanted = {name: name_map(name) for name in params}
    missing = sorted(hf for hf in wanted.values() if hf not in files)
    if missing:
        raise KeyError(f"{path}: checkpoint lacks {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    by_file: dict[str, list[str]] = {}
    for name, hf in wanted.items():
        by_file.setdefault(files[hf], []).append(name)
    with torch.no_grad():
        for file, names in sorted(by_file.items()):
            with safe_open(str(path / file), "pt") as f:
                for name in names:
                    param, hf = params[name], wanted[name]
                    where = getattr(param, "tp_slice", None)
                    view = f.get_slice(hf)
                    shape = tuple(view.get_shape())
                    if where is None:
                        source = view[:]
                    else:
                        dim, start, stop = where
                        source = view[tuple(slice(start, stop) if k == dim else slice(None) for k in range(len(shape)))]
                    if tuple(source.shape) != tuple(param.shape):
                        part = "" if where is None else f" (rows/columns [{where[1]}:{where[2]}) of dim {where[0]})"
                        raise ValueError(f"{path / file}: {hf} has shape {shape}{part}, model expects "
                                         f"{tuple(param.shape)}")
                    param.copy_(source.to(param.dtype))


def load_llama(path: str | Path, backend: str = "sdpa", dtype: torch.dtype = torch.float32) -> Llama:
    model = Llama(load_config(path), backend).to(dtype)
    load_state_dict(model, path)
    return model


def save_hf(tensors: dict[str, torch.Tensor], config: Architecture, path: str | Path,
            max_shard_bytes: int = 5 * 1024 ** 3, dtype: torch.dtype | None = None) -> None:
    """Write an HF checkpoint (HF names -> tensors) that AutoModelForCausalLM.from_pretrained loads.

    Shards of at most max_shard_bytes with an index when there is more than one; files are written
    under temporary names and renamed, so an interrupted save leaves no half-written shard.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu", dtype or tensors[name].dtype).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    names = [SINGLE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                               for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, str(path / (name + ".tmp")), metadata={"format": "pt"})
        os.replace(path / (name + ".tmp"), path / name)
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {n: f for f, s in zip(names, shards) for n in s}}
        (path / INDEX).write_text(json.dumps(index, indent=2))
    write_config(path, config, {t.dtype for shard in shards for t in shard.values()})


def write_config(path: str | Path, config: Architecture, dtypes: set[torch.dtype]) -> None:
    """config.json, its dtype the saved weights' own (`dtypes`: the saved tensors'), never the source
    model's label carried over (a bf16 model trained in fp32 saves fp32)."""
    hf_config = config.to_hf()
    # Floating dtypes only (the weights'); transformers 5 reads "dtype", older versions "torch_dtype".
    floating = sorted(str(d).removeprefix("torch.") for d in dtypes if d.is_floating_point)
    if len(floating) == 1:
        hf_config["dtype"] = hf_config["torch_dtype"] = floating[0]
    else:
        hf_config.pop("dtype", None)
        hf_config.pop("torch_dtype", None)
    (Path(path) / "config.json").write_text(json.dumps(hf_config, indent=2))


def save_llama(model: Llama, path: str | Path, **kwargs) -> None:
    save_hf({to_hf_name(n): p for n, p in model.named_parameters()}, model.config, path, **kwargs)
