"""The packed micro-batches the pipeline tests train on: bundled pairs, bundled tokenizer."""

from maskdpo.data import encode_pair, load_tokenizer, pack_pairs
from maskdpo.data.bundled import bundled_pairs
from maskdpo.data.packing import empty_like

BUDGET = 384
MAX_PAIRS = 2
PACKING_PAIRS = 8  # the packing-independence scenarios train on the first 8 pairs
PACKING_BUDGET = 768


def encoded_pairs():
    tokenizer = load_tokenizer()
    return [encode_pair(p, tokenizer, max_length=BUDGET // 2) for p in bundled_pairs()]


def micro_batches(count: int = 4):
    """`count` micro-batches of BUDGET tokens and the number of pairs they index."""
    encoded = encoded_pairs()
    packing = pack_pairs(encoded, BUDGET, load_tokenizer().pad_token_id, max_pairs=MAX_PAIRS)
    return packing.micro_batches[:count], len(encoded)


def packed_differently(pairs_per_micro_batch: int, data_parallel: int):
    """The first PACKING_PAIRS pairs packed with at most `pairs_per_micro_batch` per micro-batch, the
    list padded with empty micro-batches to a multiple of `data_parallel`."""
    encoded = encoded_pairs()[:PACKING_PAIRS]
    packing = pack_pairs(encoded, PACKING_BUDGET, load_tokenizer().pad_token_id, max_pairs=pairs_per_micro_batch,
                         max_seqlen=BUDGET // 2)
    mbs = list(packing.micro_batches)
    mbs += [empty_like(mbs[0])] * (-len(mbs) % data_parallel)
    return mbs, len(encoded)
