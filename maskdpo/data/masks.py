"""Exact token masks: which tokens of a rendered pair count, and with what weight.

The response is rendered with the tokenizer's chat template and tokenized as one string with
character offsets; each token takes the weight of the sentence holding its first non-space
character. No standalone token counts are added up anywhere, so newlines, list markers and
normalised whitespace cannot shift a span (the authors' method drifts there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import RecordError
from .records import Pair, Response


class SkippedPair(RecordError):
    """A valid pair that cannot train (no kept token on either side): counted and recorded, never fatal."""

    skippable = True


@dataclass(frozen=True, eq=False)
class EncodedSide:
    """One side of an encoded pair. The arrays stay numpy from encoding through the cache to packing."""

    input_ids: np.ndarray  # (n,) int64
    weights: np.ndarray    # (n,) float32; weights[i]: the weight of predicting input_ids[i]
    prompt_length: int     # tokens before the first response token
    truncated: int         # tokens dropped from the tail by max_length
    kept_tokens: int       # sentence tokens with weight > 0 (the end-of-turn token is not counted)

    def __post_init__(self):
        object.__setattr__(self, "input_ids", np.asarray(self.input_ids, dtype=np.int64))
        object.__setattr__(self, "weights", np.asarray(self.weights, dtype=np.float32))
        if self.input_ids.shape != self.weights.shape or self.input_ids.ndim != 1:
            raise ValueError(f"input_ids {self.input_ids.shape} and weights {self.weights.shape} must be equal 1-d shapes")

    def __eq__(self, other) -> bool:
        return (isinstance(other, EncodedSide) and np.array_equal(self.input_ids, other.input_ids)
                and np.array_equal(self.weights, other.weights)
                and (self.prompt_length, self.truncated, self.kept_tokens)
                == (other.prompt_length, other.truncated, other.kept_tokens))


@dataclass(frozen=True)
class EncodedPair:
    pair_id: str
    chosen: EncodedSide
    rejected: EncodedSide

    @property
    def length(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


# Code points that str.isspace() accepts: the first non-space character of a token decides its sentence.
_SPACES = np.array(sorted(ord(c) for c in map(chr, range(0x3001)) if c.isspace()), dtype=np.uint32)


def _first_nonspace_after(text: str) -> np.ndarray:
    """next[p] = the smallest q >= p with text[q] not whitespace (len(text) if none); length len+1."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    positions = np.where(np.isin(codes, _SPACES), len(codes), np.arange(len(codes)))
    nxt = np.minimum.accumulate(positions[::-1])[::-1]
    return np.append(nxt, len(codes))


EOT_CHOICES = ("always", "last_sentence", "never")
"""How each response's end-of-turn token counts: always weight 1 on both sides (as the authors and TRL
count it, so that Mask-DPO with nothing masked is plain DPO), the weight of the response's last
sentence on its side, or never."""

MASK_CHOICES = ("sentences", "none")
"""Which response tokens count: those of the sentences the side keeps (Mask-DPO), or none masked:
every token of both sides after the prompt as rendered for generation, through the end-of-turn token
(plain DPO on the same pairs, as TRL counts it: the paper's "w/o mask" ablation)."""

_MARKER = "MASKDPO-END-OF-TURN-PROBE"


@functools.lru_cache(maxsize=16)
def end_of_turn(tokenizer) -> int | None:
    """The token the chat template writes right after an assistant message's content (<|eot_id|> for
    Llama-3, <|im_end|> for ChatML), found by rendering one and looking; None when the template writes
    nothing there. Not taken from the special-token list: a base Llama-3 tokenizer's end of sequence
    is <|end_of_text|>, not the <|eot_id|> its template ends turns with."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi."},
                                              {"role": "assistant", "content": _MARKER}], tokenize=False)
    after = rendered[rendered.rfind(_MARKER) + len(_MARKER):]
    if not after.strip():
        return None
    ids = tokenizer.backend_tokenizer.encode(after, add_special_tokens=False).ids
    added = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    marked = [i for i in ids if i in added]
    return marked[0] if marked else None  # plain text (a newline) is no end-of-turn token


def _render(tokenizer, prompt, response_text: str | None) -> str:
    messages = list(prompt)
    if response_text is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response_text}], tokenize=False)


def encode_side(response: Response, keep_correct: bool, prefix: str, full: str, tokenizer,
                max_length: int, eot: str, field: str, mask: str = "sentences") -> EncodedSide:
    """Token ids and weights for one rendered side (see encode_pair)."""
    if not full.startswith(prefix):
        diverge = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), min(len(prefix), len(full)))
        raise RecordError(f"the chat template renders the prompt differently once a response follows (from "
                          f"character {diverge}: {prefix[diverge:diverge + 40]!r} vs {full[diverge:diverge + 40]!r})",
                          "prompt")
    text = response.text
    core = text.strip()
    lead = len(text) - len(text.lstrip())
    at = full.find(core, len(prefix))
    if at < 0:
        raise RecordError("the chat template changed the response text; cannot map sentences to tokens", field)
    shift = at - lead  # response character c sits at full[c + shift]

    # Per character of `full`: the index of the sentence holding it, -1 between sentences and outside
    # the response; then per sentence the weight this side gives it.
    holder = np.full(len(full) + 1, -1, dtype=np.int64)
    for k, s in enumerate(response.sentences):
        holder[max(s.start + shift, at):min(s.end + shift, at + len(core))] = k
    correct = np.array([s.correct for s in response.sentences] + [0.0], dtype=np.float32)
    sentence_weight = correct if keep_correct else np.append(1.0 - correct[:-1], 0.0).astype(np.float32)

    encoding = tokenizer.backend_tokenizer.encode(full, add_special_tokens=False)
    ids = np.asarray(encoding.ids, dtype=np.int64)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    start, end = offsets[:, 0], offsets[:, 1]
    first = _first_nonspace_after(full)[start]
    # A token belongs to the sentence of its first non-space character; a whitespace-only token to
    # the sentence that holds it whole (inside a sentence), or to none (between sentences).
    # Zero-width tokens (tokenizers that trim offsets) belong to a sentence only from inside it.
    last = np.where(end > start, end - 1, np.maximum(start - 1, 0))
    whole = np.where(holder[start] == holder[last], holder[start], -1)
    owner = np.where(first < end, holder[first], whole)
    weights = sentence_weight[owner]  # owner -1 picks the trailing 0.0
    prompt_length = int(np.searchsorted(offsets[:, 1], at, side="right"))
    eot_id = end_of_turn(tokenizer) if eot != "never" else None
    # The end-of-turn token: the template's, first after the response (templates may put spaces or
    # newlines before it).
    after = np.nonzero((offsets[:, 0] >= at + len(core)) & (ids == eot_id))[0] if eot_id is not None else []
    if mask == "none":
        # Every token after the prompt as rendered for generation (a template's text before the
        # response, such as Qwen3's empty think block, included: what TRL's DPO counts), through the
        # end of turn (or the end when there is none).
        generation_start = int(np.searchsorted(offsets[:, 1], len(prefix), side="right"))
        response_end = int(after[0]) + 1 if len(after) else len(ids)
        weights = np.zeros(len(ids), dtype=np.float32)
        weights[generation_start:response_end] = 1.0
    kept_tokens = int(np.count_nonzero(weights[:max_length] > 0))
    if len(after) and mask == "sentences":
        last_sentence = sentence_weight[len(response.sentences) - 1] if response.sentences else 0.0
        weights[after[0]] = 1.0 if eot == "always" else last_sentence
    truncated = max(0, len(ids) - max_length)
    if truncated:
        ids, weights = ids[:max_length], weights[:max_length]
    return EncodedSide(ids, weights, min(prompt_length, len(ids)), truncated, kept_tokens)


def encode_pair(pair: Pair, tokenizer, max_length: int = 1024, eot: str = "always",
                mask: str = "sentences") -> EncodedPair:
    """Render and tokenize both sides of `pair`; weight each token by its sentence.

    weights[i] is the weight of predicting input_ids[i]: 0 for prompt and template tokens and for
    text between sentences; for response tokens the weight of the sentence holding the token's first
    non-space character (chosen: the sentence's correctness, 1 for correct labels; rejected: 1 minus
    it, 1 for hallucinated labels; soft weights pass through). `eot` (EOT_CHOICES) says how the
    end-of-turn token counts: always 1 (the default, as the authors and TRL), the last sentence's
    weight, or never. mask="none" (MASK_CHOICES) weighs every response token 1 on both sides
    instead, through the end-of-turn token (counted unless eot="never"). Sides longer than
    `max_length` lose their tail (counted
    in `truncated`). Raises SkippedPair if no token is kept on either side, RecordError if the chat
    template alters the response so that sentences cannot be mapped.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if eot not in EOT_CHOICES:
        raise ValueError(f"eot must be one of {', '.join(EOT_CHOICES)}, got {eot!r}")
    if mask not in MASK_CHOICES:
        raise ValueError(f"mask must be one of {', '.join(MASK_CHOICES)}, got {mask!r}")
    prefix = _render(tokenizer, pair.prompt, None)
    sides = []
    for name, response, keep_correct in (("chosen", pair.chosen, True), ("rejected", pair.rejected, False)):
        full = _render(tokenizer, pair.prompt, response.text)
        sides.append(encode_side(response, keep_correct, prefix, full, tokenizer, max_length, eot, name, mask))
    chosen, rejected = sides
    if chosen.kept_tokens == 0 and rejected.kept_tokens == 0:
        truncated = " after truncation" if chosen.truncated or rejected.truncated else ""
        # The end-of-turn token alone is no signal: such a pair is skipped, never trained.
        raise SkippedPair(f"no kept token on either side{truncated}", "masks")
    return EncodedPair(pair.pair_id, chosen, rejected)
