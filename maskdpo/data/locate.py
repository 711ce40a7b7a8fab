"""Find sentence strings (the authors' pair format gives sentences as text) in their response."""

from __future__ import annotations

import re

from .errors import RecordError

# What may stand outside every sentence (before, between or after them): whitespace, and list markers
# at the start of a line followed by a space ("1.", "2)", "-", "*", "•", "#", ">"). Anything else is
# response text that no sentence covers: its tokens would get weight 0 without anyone deciding so.
_UNCOVERED_OK = re.compile(r"(?:\s+|^[ \t]*(?:\d{1,3}[.)]|[-*+•·>]|#{1,6})(?=\s))*", re.M)


def gap_problem(text: str, start: int, end: int, where: str) -> str | None:
    """What is wrong with text[start:end] standing outside every sentence, or None."""
    if end > start and not _UNCOVERED_OK.fullmatch(text, start, end):
        return (f"text {where} is covered by no sentence: {text[start:end][:60]!r} (characters {start}-{end}); "
                "only whitespace and list markers at line starts may be")
    return None


def uncovered_problem(text: str, spans: list[tuple[int, int]]) -> str | None:
    """What is wrong with the text outside `spans` (ordered, non-overlapping), or None."""
    cursor = 0
    for start, end in spans:
        problem = gap_problem(text, cursor, start, "between sentences" if cursor else "before the first sentence")
        if problem:
            return problem
        cursor = end
    return gap_problem(text, cursor, len(text), "after the last sentence")


def _whitespace_pattern(sentence: str) -> re.Pattern:
    """`sentence` with every whitespace run matching any whitespace run (and none at the ends)."""
    return re.compile(r"\s+".join(re.escape(word) for word in sentence.split()))


def locate_sentences(text: str, sentences: list[str], field: str) -> list[tuple[int, int] | None]:
    """Character spans of `sentences` in `text`, searched in order from a moving cursor.

    Each sentence is matched at its earliest occurrence after the previous one, whitespace runs
    matching any whitespace (newlines, repeated or non-breaking spaces that a splitter may have
    folded; an exact match is one of these). Text outside the sentences may hold only whitespace and
    list markers at line starts (uncovered_problem): anything else means the sentences are not
    consecutive pieces of the response. A sentence with no text gets None. A sentence that cannot be found raises
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
        problem = gap_problem(text, cursor, start, "between sentences" if cursor else "before the first sentence")
        if problem:
            raise RecordError(problem, f"{field}[{k}]")
        spans.append((start, end))
        cursor = end
    problem = gap_problem(text, cursor, len(text), "after the last sentence") if cursor else None
    if problem:
        raise RecordError(problem, field)
    return spans
