"""Loading tokenizers by path (any Hugging Face fast tokenizer directory, or the bundled one)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from ..assets import TOKENIZER

BUNDLED_TOKENIZER = TOKENIZER


def run_tokenizer_dir(tokenizer: str | Path | None, model_path: str | Path | None) -> Path:
    """The tokenizer a training run uses: data.tokenizer, else model.path when it holds
    tokenizer.json, else the bundled one."""
    if tokenizer is not None:
        return Path(tokenizer)
    if model_path is not None and (Path(model_path) / "tokenizer.json").exists():
        return Path(model_path)
    return BUNDLED_TOKENIZER


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str | Path | None = None):
    """A fast tokenizer with a chat template from a local directory (default: the bundled one).

    Masks need character offsets, which only fast (Rust) tokenizers give, and a chat template.
    """
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else BUNDLED_TOKENIZER
    if not path.is_dir():
        raise ValueError(f"tokenizer: {path} is not a directory holding tokenizer files")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (ValueError, OSError, AttributeError) as e:
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            # The bundled tokenizer (and any saved by transformers 5) names the class TokenizersBackend,
            # which 4.x does not know: say so instead of 4.x's "tokenizer class does not exist".
            raise ValueError(f"tokenizer: {path} could not be loaded with transformers {transformers.__version__}; "
                             "maskdpo needs transformers>=5 (pip install 'transformers>=5')") from e
        raise ValueError(f"tokenizer: {path} could not be loaded: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer: {path} loads as a slow tokenizer; masks need a fast one (tokenizer.json)")
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer: {path} has no chat template")
    return tokenizer


# The files that define a tokenizer and its chat template. A model directory also holds the weights:
# those are never read here.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")


def tokenizer_fingerprint(path: str | Path | None = None) -> str:
    """sha256 over the tokenizer's own files (names and bytes, streamed): the cache key's tokenizer part."""
    path = Path(path) if path is not None else BUNDLED_TOKENIZER
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
