"""The packed micro-batches the pipeline tests train on: bundled pairs, bundled tokenizer."""

import json

from maskdpo.data import LabelMap, build_pairs, encode_pair, load_tokenizer, pack_pairs, parse_annotated
from maskdpo.data.cli import BUNDLED_DATA

BUDGET = 384
MAX_PAIRS = 2


def micro_batches(count: int = 4):
    """`count` micro-batches of BUDGET tokens and the number of pairs they index."""
    samples = [parse_annotated(json.loads(line), LabelMap())
               for line in (BUNDLED_DATA / "annotated.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs, _ = build_pairs(samples)
    tokenizer = load_tokenizer()
    encoded = [encode_pair(p, tokenizer, max_length=BUDGET // 2) for p in pairs]
    packing = pack_pairs(encoded, BUDGET, tokenizer.pad_token_id, max_pairs=MAX_PAIRS)
    return packing.micro_batches[:count], len(encoded)


def encoded_pairs():
    samples = [parse_annotated(json.loads(line), LabelMap())
               for line in (BUNDLED_DATA / "annotated.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs, _ = build_pairs(samples)
    tokenizer = load_tokenizer()
    return [encode_pair(p, tokenizer, max_length=BUDGET // 2) for p in pairs]
