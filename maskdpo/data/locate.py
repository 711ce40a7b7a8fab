"""Find sentence strings (the authors' pair format gives sentences as text) in their response."""

from __future__ import annotations

import re

from .errors import RecordError


def _whitespace_pattern(sentence: str) -> re.Pattern:
    """`sentence` with every whitespace run matching any whitespace run (and none at the ends)."""
    return re.compile(r"\s+".join(re.escape(word) for word in sentence.split()))


def locate_sentences(text: str, sentences: list[str], field: str) -> list[tuple[int, int] | None]:
    """Character spans of `sentences` in `text`, searched in order from a moving cursor.

    Each sentence is matched exactly first, then with whitespace normalised (newlines, repeated or
    non-breaking spaces that a splitter may have folded). A sentence with no text gets None. A
    sentence that cannot be found after the previous one raises RecordError: never a guess.
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
        start = text.find(needle, cursor)
        if start >= 0:
            end = start + len(needle)
        else:
            match = _whitespace_pattern(needle).search(text, cursor)
            if match is None:
                raise RecordError(
                    f"sentence not found in the response at or after character {cursor}: {needle[:60]!r}",
                    f"{field}[{k}]",
                )
            start, end = match.span()
        spans.append((start, end))
        cursor = end
    return spans
