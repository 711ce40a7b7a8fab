"""Files shipped inside the package (one place that knows where they are): the example data set,
the tiny tokenizer built by scripts/build_tokenizer.py, and the annotation prompt templates."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DATA = ASSETS / "data"
TOKENIZER = ASSETS / "tokenizer"
TEMPLATES = ASSETS / "templates"
