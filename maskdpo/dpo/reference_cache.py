"""The reference log-probs cache: computed once by the frozen starting model, reused every epoch.

Stored beside the encoded data, keyed by the model (config.json and the weight files' names, sizes
and modification times: hashing 16 GB of weights at every start would cost minutes), the packed
data (encode cache key, token budget, pairs per micro-batch) and the kernel's version. Any change
recomputes; a stale file is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .. import __version__


def model_fingerprint(model_dir: str | Path) -> str:
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for file in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.index.json")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def reference_key(model_dir: str | Path, data_key: str, budget: int, max_pairs: int, num_pairs: int,
                  extra: dict | None = None) -> str:
    """extra: what else changes the numbers (compute dtype, attention backend)."""
    parts = {"model": model_fingerprint(model_dir), "data": data_key, "budget": budget,
             "max_pairs": max_pairs, "pairs": num_pairs, "version": __version__, **(extra or {})}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def load_reference(cache_dir: str | Path, key: str) -> torch.Tensor | None:
    path = Path(cache_dir) / f"reference-{key}.pt"
    return torch.load(path) if path.exists() else None


def save_reference(cache_dir: str | Path, key: str, table: torch.Tensor) -> Path:
    """Write atomically (temporary name, then rename)."""
    path = Path(cache_dir) / f"reference-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(table, tmp)
    os.replace(tmp, path)
    return path
