"""Rule-based sentence splitting for English and Chinese responses (as in the Mask-DPO paper).

English: a sentence ends at `.`, `!`, `?` or `;` (with any closing quotes or brackets) followed by
whitespace, and at every newline. A period does not end a sentence after a known abbreviation
("Dr.", "e.g."), an initial ("J. K."), a dotted acronym ("U.S."), or a list number at the start of
a line ("1."). Chinese: a sentence ends after 。！？； (or !?;) and at every newline.
Sentences are returned as character spans with surrounding whitespace left out.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset("""
Mr Mrs Ms Dr Prof Sr Jr St Mt Ft Gen Col Capt Lt Sgt Rev Hon Gov Sen Rep Pres
vs etc e.g i.e cf al approx ca Inc Ltd Co Corp Bros No Nos Vol Fig Eq pp Ed eds
Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Mon Tue Wed Thu Fri Sat Sun
""".split())

_EN_END = re.compile(r"[.!?;]+[\"'”’)\]]*(?=\s)|\n")
_ZH_END = re.compile(r"[。！？；!?;]+[”’」』）)]*|\n")
_WORD_BEFORE = re.compile(r"(\S+)\.$")


def _protected(text: str, dot: int) -> bool:
    """Whether the period at text[dot] belongs to an abbreviation, initial, acronym or list number."""
    match = _WORD_BEFORE.search(text, 0, dot + 1)
    if match is None:
        return False
    word = match.group(1).lstrip("(\"'“‘[")
    if word in ABBREVIATIONS or word.rstrip(".") in ABBREVIATIONS:
        return True
    if re.fullmatch(r"[A-Z]", word) or re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word):
        return True  # an initial ("J.") or a dotted acronym ("U.S.")
    line_start = text.rfind("\n", 0, match.start()) + 1
    return word.isdigit() and not text[line_start:match.start()].strip()  # "1." opening a list item


def split_sentences(text: str, language: str = "en") -> list[tuple[int, int]]:
    """Spans (start, end) of the sentences of `text`; language "zh" (or "zh-*") uses Chinese rules."""
    chinese = language.lower().startswith("zh")
    pattern = _ZH_END if chinese else _EN_END
    spans, start = [], 0
    for match in pattern.finditer(text):
        end = match.end()
        if not chinese and match.group().startswith(".") and len(match.group()) == 1 and _protected(text, match.start()):
            continue
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        if piece.strip():
            a += len(piece) - len(piece.lstrip())
            b -= len(piece) - len(piece.rstrip())
            out.append((a, b))
    return out
