"""Digests that key caches and identify runs: of texts, files, source code and model directories.

One place decides what identifies each thing, so the encode cache, the reference cache and the run
fingerprint cannot disagree about it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def text_digest(text: str) -> str:
    """A short digest of a text (prompt templates, settings): 16 hex digits of its sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(*subpackages: str) -> str:
    """sha256 over the Python sources (names and bytes) of subpackages of maskdpo, e.g. "kernels",
    "model": a change to the code that computes a cached number invalidates the cache. Found through
    the import system, since kernels/ sits outside maskdpo/ in a checkout."""
    import importlib

    digest = hashlib.sha256()
    for name in subpackages:
        root = Path(importlib.import_module(f"maskdpo.{name}").__path__[0])
        for source in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{source.relative_to(root)}".encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def model_digest(model_dir: str | Path) -> str:
    """A model directory: config.json's bytes and each weight file's name, size and modification
    time. Hashing the weights themselves (16 GB for 8B) would cost minutes at every start; a file
    rewritten in place changes its time."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for file in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.index.json")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The versions of maskdpo and of the libraries whose numerics a run depends on."""
    import importlib.metadata

    from . import __version__

    versions = {"maskdpo": __version__}
    for name in ("torch", "triton", "deepspeed", "transformers", "tokenizers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
