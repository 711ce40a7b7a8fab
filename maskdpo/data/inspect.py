"""Show a pair's masks in the terminal: prompt, kept and masked tokens told apart."""

from __future__ import annotations

from .masks import EncodedPair, EncodedSide, _render
from .records import Pair

# ANSI styles: prompt/template dim; kept green on the chosen side, red on the rejected; soft weights
# yellow; masked response text plain.
STYLES = {"prompt": "\033[2m", "kept_chosen": "\033[1;32m", "kept_rejected": "\033[1;31m",
          "soft": "\033[33m", "masked": ""}
RESET = "\033[0m"
# Without colour, kept text is bracketed ⟦…⟧, soft-weighted text ⟨…⟩; prompt/template is left out.
MARKS = {"kept_chosen": ("⟦", "⟧"), "kept_rejected": ("⟦", "⟧"), "soft": ("⟨", "⟩"), "masked": ("", "")}
# What each class means, in the legend line under the pair's header (in this order).
MEANINGS = {"kept_chosen": "kept chosen = correct sentences", "kept_rejected": "kept rejected = hallucinated sentences",
            "soft": "soft weight", "prompt": "prompt/template", "masked": "masked"}


def legend(color: bool) -> str:
    """One line explaining the marks of the mode in use: with colour, each class's meaning in its own
    style (STYLES); without, each bracket pair of MARKS around what it marks."""
    if color:
        return "legend: " + "  ".join(f"{STYLES[c]}{text}{RESET}" if STYLES[c] else f"{text} plain"
                                      for c, text in MEANINGS.items())
    groups: dict[tuple[str, str], list[str]] = {}  # kept text has the same brackets on both sides: shown once
    for cls, marks in MARKS.items():
        if any(marks):
            groups.setdefault(marks, []).append(cls)
    names = {("kept_chosen", "kept_rejected"): "kept"}
    shown = " ".join(f"{a}{names.get(tuple(c), ' / '.join(MEANINGS[x] for x in c))}{b}" for (a, b), c in groups.items())
    return f"legend: {shown}, masked text plain, prompt and template not shown"


def _classes(side: EncodedSide, name: str) -> list[str]:
    out = []
    for i, w in enumerate(side.weights):
        if i < side.prompt_length:
            out.append("prompt")
        elif w >= 1.0:
            out.append(f"kept_{name}")
        elif w > 0:
            out.append("soft")
        else:
            out.append("masked")
    return out


def render_side(pair: Pair, side: EncodedSide, name: str, tokenizer, color: bool) -> str:
    """The rendered side's text, each token's characters styled by its class."""
    response = pair.chosen if name == "chosen" else pair.rejected
    full = _render(tokenizer, pair.prompt, response.text)
    offsets = tokenizer.backend_tokenizer.encode(full, add_special_tokens=False).offsets[:len(side.input_ids)]
    pieces, at, current = [], 0, None
    for (a, b), cls in zip(offsets, _classes(side, name)):
        a = max(a, at)  # byte-level tokens may share a character: show it once
        if a >= b:
            continue
        if cls == "prompt" and not color:
            at = b
            continue
        if cls != current:
            if current is not None:
                pieces.append(RESET if color else MARKS.get(current, ("", ""))[1])
            pieces.append(STYLES[cls] if color else MARKS[cls][0])
            current = cls
        pieces.append(full[a:b])
        at = b
    if current is not None:
        pieces.append(RESET if color else MARKS.get(current, ("", ""))[1])
    return "".join(pieces)


def side_counts(side: EncodedSide) -> str:
    response = len(side.input_ids) - side.prompt_length
    kept = side.kept_tokens
    text = (f"{len(side.input_ids)} tokens: {side.prompt_length} prompt/template, {response} response "
            f"({kept} kept, {response - kept} masked)")
    return text + (f", {side.truncated} truncated" if side.truncated else "")


def show_pair(pair: Pair, encoded: EncodedPair, tokenizer, color: bool) -> str:
    lines = [f"pair {pair.pair_id}" + (f"  (question {pair.question_id}, {pair.language})" if pair.question_id else "")]
    lines.append(legend(color))
    for name in ("chosen", "rejected"):
        side = getattr(encoded, name)
        lines.append(f"── {name}: {side_counts(side)}")
        lines.append(render_side(pair, side, name, tokenizer, color))
    return "\n".join(lines)
