"""The bundled example data: 30 questions (English and Chinese) with annotated sampled responses."""

from __future__ import annotations

import json

from ..assets import DATA
from .labels import LabelMap
from .pairs import build_pairs
from .records import AnnotatedSample, Pair, parse_annotated

BUNDLED_DATA = DATA


def bundled_samples(label_map: LabelMap | None = None) -> list[AnnotatedSample]:
    lines = (BUNDLED_DATA / "annotated.jsonl").read_text(encoding="utf-8").splitlines()
    return [parse_annotated(json.loads(line), label_map or LabelMap()) for line in lines if line.strip()]


def bundled_pairs(label_map: LabelMap | None = None) -> list[Pair]:
    """One pair per usable question (best chosen, worst rejected)."""
    return build_pairs(bundled_samples(label_map))[0]
