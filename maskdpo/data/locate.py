"""Find sentence strings (the authors' pair format gives sentences as text) in their response."""

from __future__ import annotations

import re

from .errors import RecordError

# What may lie between consecutive sentences: whitespace, bullets and list numbering.
_SKIPPABLE = re.compile(r"[\s\-*•·#>()\d.]*")


def _whitespace_pattern(sentence: str) -> re.Pattern:
    """`sentence` with every whitespace run matching any whitespace run (and none at the ends)."""
    return re.compile(r"\s+".join(re.escape(word) for word in sentence.split()))


def locate_sentences(text: str, sentences: list[str], field: str) -> list[tuple[int, int] | None]:
    """Character spans of `sentences` in `text`, searched in order from a moving cursor.

    Each sentence is matched at its earliest occurrence after the previous one, whitespace runs
    matching any whitespace (newlines, repeated or non-breaking spaces that a splitter may have
    folded; an exact match is one of these). The text skipped before it may hold only whitespace and
    list markers ("1.", "-", "*"): anything else means the sentences are not consecutive pieces of
    the response. A sentence with no text gets None. A sentence that cannot be found raises
    RecordError: never a guess.
    """
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for k, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise RecordError(f"must be a string, got {type(sentence).__name__}", f"{field}[{k}]")
        needle = sentence.strip()
        if not needle:
            spans.append(None)
            continue
        match = _whitespace_pattern(needle).search(text, cursor)
        if match is None:
            raise RecordError(f"sentence not found in the response at or after character {cursor}: {needle[:60]!r}",
                              f"{field}[{k}]")
        start, end = match.span()
        if not _SKIPPABLE.fullmatch(text[cursor:start]):
            raise RecordError(f"text between sentences is covered by none: {text[cursor:start][:60]!r} "
                              f"(characters {cursor}-{start})", f"{field}[{k}]")
        spans.append((start, end))
        cursor = end
    return spans
