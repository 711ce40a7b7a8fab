"""The packed micro-batches the pipeline tests train on: bundled pairs, bundled tokenizer."""

from maskdpo.data import encode_pair, load_tokenizer, pack_pairs
from maskdpo.data.bundled import bundled_pairs

BUDGET = 384
MAX_PAIRS = 2


def encoded_pairs():
    tokenizer = load_tokenizer()
    return [encode_pair(p, tokenizer, max_length=BUDGET // 2) for p in bundled_pairs()]


def micro_batches(count: int = 4):
    """`count` micro-batches of BUDGET tokens and the number of pairs they index."""
    encoded = encoded_pairs()
    packing = pack_pairs(encoded, BUDGET, load_tokenizer().pad_token_id, max_pairs=MAX_PAIRS)
    return packing.micro_batches[:count], len(encoded)
