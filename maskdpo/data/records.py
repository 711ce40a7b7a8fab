"""The records that flow through the data side, and their parsing from JSON with exact errors.

Formats (JSONL, one object per line; see the README for the full description):

Annotated sample: {"question_id", "sample_id", "language", "prompt", "response",
                   "sentences": [{"start", "end", "label" | "weight"}, ...]}
Pair (ours):      {"pair_id", "question_id", "language", "prompt",
                   "chosen": {"response", "sentences", ...}, "rejected": {...}}
Pair (authors'):  {"prompt": [messages], "chosen": [{"role": "assistant", "content"}],
                   "chosen_item": {"sents": [str], "type": [label]}, "rejected": ..., "rejected_item": ...}

A prompt is a string (one user turn) or a list of {"role", "content"} messages. A sentence's
`label` is mapped to correct / hallucinated by a LabelMap; an explicit `weight` in [0, 1] is a soft
correctness: the chosen side keeps the sentence with that weight, the rejected side with 1 - weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import RecordError
from .labels import LabelMap
from .locate import locate_sentences, uncovered_problem

Message = dict  # {"role": str, "content": str, ...}
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    correct: float  # 1.0 correct, 0.0 hallucinated, or a soft value in between
    label: str | None = None
    explicit_weight: bool = False  # `correct` came from a `weight` field, not from the label


@dataclass(frozen=True)
class Response:
    text: str
    sentences: tuple[Sentence, ...]

    def score(self) -> float:
        """Fraction of correct sentences (soft values count as given). Needs at least one sentence."""
        return sum(s.correct for s in self.sentences) / len(self.sentences)


@dataclass(frozen=True)
class AnnotatedSample:
    question_id: str
    sample_id: str
    language: str
    prompt: tuple[Message, ...]
    response: Response
    topic: str | None = None  # the question's topic (the paper's scaling study selects by topic)


@dataclass(frozen=True)
class Pair:
    pair_id: str
    question_id: str
    language: str
    prompt: tuple[Message, ...]
    chosen: Response
    rejected: Response


def _require(obj: dict, key: str, kind, field: str):
    if key not in obj:
        raise RecordError("missing", f"{field}{key}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(f"must be {names}, got {type(value).__name__}", f"{field}{key}")
    return value


def parse_prompt(value, field: str = "prompt") -> tuple[Message, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError("is empty", field)
        return ({"role": "user", "content": value},)
    if not isinstance(value, list) or not value:
        raise RecordError("must be a string or a non-empty list of {role, content} messages", field)
    messages = []
    for k, message in enumerate(value):
        if not isinstance(message, dict):
            raise RecordError("must be an object with role and content", f"{field}[{k}]")
        role = _require(message, "role", str, f"{field}[{k}].")
        _require(message, "content", str, f"{field}[{k}].")
        if role not in ROLES:
            raise RecordError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", f"{field}[{k}].role")
        messages.append(dict(message))  # other keys (name, tool calls) go to the chat template as given
    if messages[-1]["role"] != "user":
        raise RecordError(f"must end with a user turn (the response answers it), not {messages[-1]['role']!r}",
                          f"{field}[{len(messages) - 1}].role")
    return tuple(messages)


def _correctness(raw: dict, label_map: LabelMap, field: str) -> tuple[float, str | None, bool]:
    label = raw.get("label")
    if label is not None and not isinstance(label, str):
        raise RecordError(f"must be a string, got {type(label).__name__}", f"{field}.label")
    if "weight" in raw:
        weight = raw["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or not 0.0 <= weight <= 1.0:
            raise RecordError(f"must be a number in [0, 1], got {weight!r}", f"{field}.weight")
        return float(weight), label, True
    if label is None:
        raise RecordError("needs a label or a weight", field)
    try:
        return label_map.correctness(label), label, False
    except KeyError:
        raise RecordError(f"unknown label {label!r}; known: {', '.join(label_map.known())}", f"{field}.label") from None


def check_spans(text: str, sentences: list[Sentence], field: str) -> None:
    """Spans must lie inside the text, be non-empty, and come in order without overlapping."""
    previous_end = 0
    for k, s in enumerate(sentences):
        if not 0 <= s.start < s.end <= len(text):
            raise RecordError(f"span [{s.start}, {s.end}) is empty or outside the response (length {len(text)})",
                              f"{field}[{k}]")
        if s.start < previous_end:
            raise RecordError(f"span [{s.start}, {s.end}) overlaps or precedes the previous sentence "
                              f"(which ends at {previous_end})", f"{field}[{k}]")
        previous_end = s.end


def parse_response(obj: dict, label_map: LabelMap, field: str = "") -> Response:
    """A response text and its sentences with spans (our formats)."""
    text = _require(obj, "response", str, field)
    if not text.strip():
        raise RecordError("is empty", f"{field}response")
    raw_sentences = _require(obj, "sentences", list, field)
    sentences = []
    for k, raw in enumerate(raw_sentences):
        where = f"{field}sentences[{k}]"
        if not isinstance(raw, dict):
            raise RecordError("must be an object with start, end and a label or weight", where)
        start = _require(raw, "start", int, f"{where}.")
        end = _require(raw, "end", int, f"{where}.")
        # An optional "text" must be what the span holds: catches offsets counted in UTF-16 or bytes.
        if "text" in raw and isinstance(raw["text"], str) and 0 <= start <= end <= len(text) \
                and text[start:end].strip() != raw["text"].strip():
            raise RecordError(f"span [{start}, {end}) holds {text[start:end][:40]!r}, not the sentence's text "
                              f"{raw['text'][:40]!r} (offsets must count Unicode code points)", f"{where}.text")
        sentences.append(Sentence(start, end, *_correctness(raw, label_map, where)))
    check_spans(text, sentences, f"{field}sentences")
    problem = uncovered_problem(text, [(s.start, s.end) for s in sentences]) if sentences else None
    if problem:
        raise RecordError(problem, f"{field}sentences")
    return Response(text, tuple(sentences))


def parse_annotated(obj, label_map: LabelMap) -> AnnotatedSample:
    if not isinstance(obj, dict):
        raise RecordError("a record must be a JSON object")
    question_id = _require(obj, "question_id", (str, int), "")
    sample_id = _require(obj, "sample_id", (str, int), "")
    language = obj.get("language", "")
    if not isinstance(language, str):
        raise RecordError("must be a string", "language")
    topic = obj.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise RecordError("must be a string", "topic")
    return AnnotatedSample(str(question_id), str(sample_id), language, parse_prompt(obj.get("prompt")),
                           parse_response(obj, label_map), topic)


def _authors_side(obj: dict, side: str, label_map: LabelMap) -> Response:
    turns = _require(obj, side, list, "")
    if not turns or not isinstance(turns[-1], dict) or not isinstance(turns[-1].get("content"), str):
        raise RecordError("must be a list ending with an assistant message {role, content}", side)
    text = turns[-1]["content"]
    if not text.strip():
        raise RecordError("is empty", f"{side}[-1].content")
    item = _require(obj, f"{side}_item", dict, "")
    sents = _require(item, "sents", list, f"{side}_item.")
    types = _require(item, "type", list, f"{side}_item.")
    if len(sents) != len(types):
        raise RecordError(f"has {len(types)} labels for {len(sents)} sentences", f"{side}_item.type")
    sentences = []
    for k, (span, label) in enumerate(zip(locate_sentences(text, sents, f"{side}_item.sents"), types)):
        correctness = _correctness({"label": label}, label_map, f"{side}_item.type[{k}]")
        if span is not None:
            sentences.append(Sentence(span[0], span[1], *correctness))
    return Response(text, tuple(sentences))


def parse_pair(obj, label_map: LabelMap, default_id: str = "") -> Pair:
    """A pair in our format or the authors' (recognised by its `chosen_item`)."""
    if not isinstance(obj, dict):
        raise RecordError("a record must be a JSON object")
    if "chosen_item" in obj or "rejected_item" in obj:
        chosen = _authors_side(obj, "chosen", label_map)
        rejected = _authors_side(obj, "rejected", label_map)
    else:
        chosen = parse_response(_require(obj, "chosen", dict, ""), label_map, "chosen.")
        rejected = parse_response(_require(obj, "rejected", dict, ""), label_map, "rejected.")
    key = "pair_id" if "pair_id" in obj else "id" if "id" in obj else None
    pair_id = obj[key] if key else default_id
    if key and (isinstance(pair_id, bool) or not isinstance(pair_id, str | int) or pair_id == ""):
        raise RecordError(f"must be a non-empty string or an integer, got {pair_id!r}", key)
    return Pair(str(pair_id), str(obj.get("question_id", "")), str(obj.get("language", "")),
                parse_prompt(obj.get("prompt")), chosen, rejected)


def _side_json(response: Response, **extra) -> dict:
    sentences = []
    for s in response.sentences:
        item = {"start": s.start, "end": s.end}
        if s.label is not None:
            item["label"] = s.label
        if s.explicit_weight or s.label is None:
            item["weight"] = s.correct
        sentences.append(item)
    return {"response": response.text, "sentences": sentences, **extra}


def pair_to_json(pair: Pair, **side_extra) -> dict:
    """Our pair format. side_extra: {"chosen": {...}, "rejected": {...}} added to each side."""
    return {
        "pair_id": pair.pair_id,
        "question_id": pair.question_id,
        "language": pair.language,
        "prompt": list(pair.prompt),
        "chosen": _side_json(pair.chosen, **side_extra.get("chosen", {})),
        "rejected": _side_json(pair.rejected, **side_extra.get("rejected", {})),
    }
