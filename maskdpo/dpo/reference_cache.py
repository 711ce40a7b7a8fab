"""The reference log-probs cache: computed once by the frozen starting model, reused every epoch.

Stored beside the encoded data, keyed by the model (maskdpo.digests.model_digest), the packed data
(encode cache key, token budget, pairs per micro-batch), the source of the code that computes the
sums (kernels, model, objective), the library versions, and what else changes the numbers (dtype,
attention backend, head). Any change recomputes; a stale file is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..digests import library_versions, model_digest, source_digest


def reference_key(model_dir: str | Path, data_key: str, budget: int, max_pairs: int, num_pairs: int,
                  extra: dict | None = None) -> str:
    """extra: what else changes the numbers (compute dtype, attention backend, head, max_seqlen).

    The code that computes the sums is part of the key (the kernels, the model, the objective), and
    so are the versions of the libraries it runs on."""
    parts = {"model": model_digest(model_dir), "data": data_key, "budget": budget, "max_pairs": max_pairs,
             "pairs": num_pairs, "code": source_digest("kernels", "model", "dpo"), "versions": library_versions(),
             **(extra or {})}
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
