"""Shared test helpers for the data side: pairs written by hand, ground-truth checks."""

from maskdpo.data import LabelMap, Pair, Response, Sentence

LABELS = LabelMap()


def response(pieces, separator=" "):
    """A Response from [(sentence text, label), ...] joined by `separator` (a str or a list)."""
    seps = separator if isinstance(separator, list) else [separator] * len(pieces)
    text, sentences = "", []
    for (sentence, label), sep in zip(pieces, seps):
        start = len(text)
        text += sentence
        weight = label if isinstance(label, float) else None
        correct = weight if weight is not None else LABELS.correctness(label)
        sentences.append(Sentence(start, len(text), correct, None if weight is not None else label, weight is not None))
        text += sep
    return Response(text.rstrip(" "), tuple(sentences))


def pair(chosen, rejected, prompt="Tell me about it.", pair_id="p0"):
    return Pair(pair_id, "q0", "en", ({"role": "user", "content": prompt},), chosen, rejected)


def rendered(tokenizer, p: Pair, side: str) -> str:
    resp = getattr(p, side)
    return tokenizer.apply_chat_template(list(p.prompt) + [{"role": "assistant", "content": resp.text}], tokenize=False)


def check_ground_truth(tokenizer, p: Pair, encoded, eot_weight: float = 1.0, eot_token: str = "<|eot_id|>") -> int:
    """Character-level truth for both sides of an encoded pair, independent of how masks.py works.

    Every token with weight > 0 has all its non-space characters inside one sentence, and carries
    that sentence's weight for this side; every token with a non-space character inside a kept
    sentence is weighted. The first `eot_token` after the response (<|eot_id|>: the bundled
    template's end of turn; ChatML's is <|im_end|>) carries eot_weight, or eot_weight[side] (1 by
    default, as the authors and TRL count it). Returns the number of
    weighted tokens checked.
    """
    checked = 0
    for side, keep_correct in (("chosen", True), ("rejected", False)):
        resp, enc_side = getattr(p, side), getattr(encoded, side)
        full = rendered(tokenizer, p, side)
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"][: len(enc_side.input_ids)] == enc_side.input_ids.tolist()
        prompt_only = tokenizer.apply_chat_template(list(p.prompt), tokenize=False, add_generation_prompt=True)
        at = full.index(resp.text.strip(), len(prompt_only)) - (len(resp.text) - len(resp.text.lstrip()))
        spans = [(s.start + at, s.end + at, s.correct if keep_correct else 1 - s.correct) for s in resp.sentences]
        response_end = at + len(resp.text.rstrip())
        eot_seen = False
        for (a, b), w in zip(enc["offset_mapping"], enc_side.weights):
            if not eot_seen and a >= response_end and full[a:b] == eot_token:
                eot_seen = True
                expected = eot_weight[side] if isinstance(eot_weight, dict) else eot_weight
                assert abs(w - expected) < 1e-6, (side, "end of turn", w, expected)
                checked += w > 0
                continue
            chars = [i for i in range(a, b) if not full[i].isspace()]
            holders = sorted({k for k, (s, e, _) in enumerate(spans) for i in chars if s <= i < e})
            if chars:
                # All non-space characters in one sentence: that sentence's weight. Sentences glued
                # with no boundary the tokenizer respects ("0" + "0" -> "00"): the sentence of the
                # first non-space character, as documented. Outside every sentence: 0.
                first = [k for k in holders if spans[k][0] <= chars[0] < spans[k][1]]
                expected = spans[first[0]][2] if first else 0.0
                if len(holders) == 1:
                    assert all(spans[holders[0]][0] <= i < spans[holders[0]][1] for i in chars)
            else:
                # Whitespace only: inside a sentence it belongs to it, between sentences to none.
                inside = [k for k, (s, e, _) in enumerate(spans) if s <= a and b <= e]
                expected = spans[inside[0]][2] if inside else 0.0
            assert abs(w - expected) < 1e-6, (side, full[a:b], w, expected)
            checked += w > 0
    return checked
