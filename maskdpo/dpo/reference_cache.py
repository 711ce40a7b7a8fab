"""The reference log-probs: every response token's log-prob under the frozen starting model,
computed once by the pipeline's reference pass and cached; the per-sequence sums any run needs are
weighted sums of them on the CPU.

The cache holds log-probs per token (4 bytes each), so a new label mapping, soft weights or another
end-of-turn choice on the same pairs and model reuses it instead of a new pass. One file per model
key: the model (maskdpo.digests.model_digest), the source of the code that computes the log-probs
(kernels, model, objective), the library versions, and what else changes the numbers (dtype,
attention backend, head, max_seqlen, token budget); inside it, one entry per pair side, keyed by the
side's tokens (ids and prompt length: not its weights). A run whose sides are all there sums them;
otherwise it runs the pass and adds its sides. A stale entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..digests import library_versions, model_digest, source_digest


def side_digest(side) -> str:
    """What a side's reference log-probs depend on besides the model: its token ids and where the
    response starts (not its weights)."""
    digest = hashlib.sha256(np.int64(side.prompt_length).tobytes())
    digest.update(np.ascontiguousarray(side.input_ids, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def reference_key(model_dir: str | Path, extra: dict | None = None) -> str:
    parts = {"model": model_digest(model_dir), "code": source_digest("kernels", "model", "dpo"),
             "versions": library_versions(), **(extra or {})}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def weighted_sums(tokens: dict, weights: dict, num_pairs: int) -> torch.Tensor:
    """(num_pairs, 2) float32: for each pair and side, sum over its response targets of weight x
    log-prob (float64 accumulation); NaN for pairs with no tokens. tokens and weights map a pair index
    to (chosen, rejected) arrays of the same lengths."""
    table = np.full((num_pairs, 2), np.nan)
    for index, sides in weights.items():
        logps = tokens[index]
        for side in (0, 1):
            if len(sides[side]) != len(logps[side]):
                raise ValueError(f"pair {index}: {len(sides[side])} weights for {len(logps[side])} reference log-probs")
            table[index, side] = float(np.dot(np.asarray(sides[side], np.float64), np.asarray(logps[side], np.float64)))
    return torch.from_numpy(table).float()


def side_weights(pairs) -> dict:
    """pair index -> (chosen, rejected) weights of each response target (weights[prompt_length:])."""
    return {i: tuple(side.weights[side.prompt_length:] for side in (p.chosen, p.rejected)) for i, p in enumerate(pairs)}


def _path(cache_dir, key) -> Path:
    return Path(cache_dir) / f"reference-tokens-{key}.npz"


def _read(path: Path) -> dict[str, np.ndarray]:
    """The cached sides; a damaged file reads as empty (the pass runs again and rewrites it)."""
    if not path.exists():
        return {}
    try:
        with np.load(path) as data:
            digests, bounds, values = data["digests"], data["bounds"], data["values"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}
    return {str(d): values[bounds[k]:bounds[k + 1]] for k, d in enumerate(digests)}


def load_tokens(cache_dir: str | Path, key: str, pairs) -> dict | None:
    """pair index -> (chosen, rejected) log-probs of every response target, when the cache holds
    every side of `pairs` for this model (key), else None."""
    stored = _read(_path(cache_dir, key))
    try:
        return {i: tuple(stored[side_digest(side)] for side in (p.chosen, p.rejected)) for i, p in enumerate(pairs)}
    except KeyError:
        return None


def save_tokens(cache_dir: str | Path, key: str, pairs, tokens: dict) -> Path:
    """Add the sides of `pairs` to the cache of this model (atomically: temporary name, then rename)."""
    path = _path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = _read(path)
    for i, pair in enumerate(pairs):
        if i in tokens:
            for side, values in zip((pair.chosen, pair.rejected), tokens[i]):
                stored[side_digest(side)] = np.asarray(values, dtype=np.float32)
    digests = sorted(stored)
    bounds = np.concatenate([[0], np.cumsum([len(stored[d]) for d in digests])]).astype(np.int64)
    values = np.concatenate([stored[d] for d in digests]) if digests else np.zeros(0, np.float32)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, digests=np.asarray(digests), bounds=bounds, values=values.astype(np.float32))
    os.replace(tmp, path)
    return path
