"""Files shipped inside the package (one place that knows where they are): the example data set,
the tiny tokenizer built by scripts/build_tokenizer.py, the annotation prompt templates and
published model configs."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DATA = ASSETS / "data"
TOKENIZER = ASSETS / "tokenizer"
TEMPLATES = ASSETS / "templates"
MODELS = ASSETS / "models"  # published Hugging Face config.json files, for `maskdpo plan --model NAME`
