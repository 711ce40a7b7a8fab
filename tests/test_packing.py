"""Packing invariants: whole pairs, restarted positions, cu_seqlens, shifted labels, fixed shapes."""

import numpy as np
import pytest
from test_masks import bundled_pairs  # noqa: F401  (bundled pairs as records)

from maskdpo.data import EncodedPair, EncodedSide, encode_file, load_tokenizer, pack_pairs
from maskdpo.data.packing import IGNORE_INDEX


def side(n, prompt, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, n).tolist()  # id 0 appears: it is an ordinary token
    weights = [0.0] * prompt + rng.choice([0.0, 1.0, 0.5], n - prompt).tolist()
    return EncodedSide(ids, weights, prompt, 0, sum(w > 0 for w in weights))


def pairs(lengths):
    return [EncodedPair(f"p{i}", side(a, 3, 2 * i), side(b, 3, 2 * i + 1)) for i, (a, b) in enumerate(lengths)]


def test_invariants():
    data = pairs([(10, 12), (30, 25), (7, 9), (40, 41), (5, 6), (20, 18), (12, 11)])
    packing = pack_pairs(data, budget=96, pad_id=7)
    shapes = {tuple(a.shape for a in (mb.input_ids, mb.position_ids, mb.labels, mb.weights, mb.seq_ids,
                                      mb.cu_seqlens, mb.pair_index)) for mb in packing.micro_batches}
    assert len(shapes) == 1  # the pipeline sends shapes once
    seen = []
    for mb in packing.micro_batches:
        cu = mb.cu_seqlens
        assert cu[0] == 0 and np.all(np.diff(cu) >= 0) and cu[-1] == 96
        for p in range(mb.num_pairs):
            index = mb.pair_index[p]
            seen.append(index)
            for s, enc in enumerate((data[index].chosen, data[index].rejected)):
                a, b = cu[2 * p + s], cu[2 * p + s + 1]
                assert b - a == len(enc.input_ids)  # whole sequences, chosen then rejected, together
                assert mb.input_ids[a:b].tolist() == enc.input_ids.tolist()
                assert mb.position_ids[a:b].tolist() == list(range(b - a))
                # Row i predicts token i + 1: labels shifted, prompt targets and the last row ignored.
                expected = ([IGNORE_INDEX] * (enc.prompt_length - 1) + enc.input_ids[enc.prompt_length:].tolist()
                            + [IGNORE_INDEX])
                assert mb.labels[a:b].tolist() == expected
                assert mb.weights[a:b].tolist() == [w if l != IGNORE_INDEX else 0.0
                                                    for w, l in zip(enc.weights[1:].tolist() + [0.0], expected)]
                assert mb.seq_ids[a:b].tolist() == [2 * p + s if l != IGNORE_INDEX else -1 for l in expected]
        used = mb.tokens
        assert np.all(mb.input_ids[used:] == 7) and np.all(mb.labels[used:] == IGNORE_INDEX)
        assert np.all(mb.seq_ids[used:] == -1) and mb.position_ids[used:].tolist() == list(range(96 - used))
        assert np.all(mb.pair_index[mb.num_pairs:] == -1)
    assert sorted(seen) == list(range(len(data)))  # every pair exactly once
    real = sum(p.length for p in data)
    assert packing.efficiency == pytest.approx(real / (96 * len(packing.micro_batches)))


def test_max_pairs_bounds_each_micro_batch():
    packing = pack_pairs(pairs([(5, 5)] * 9), budget=200, pad_id=0, max_pairs=4)
    assert [mb.num_pairs for mb in packing.micro_batches] == [4, 4, 1]
    assert all(mb.cu_seqlens.shape == (10,) for mb in packing.micro_batches)


def test_a_pair_longer_than_the_budget_is_named():
    with pytest.raises(ValueError, match=r"pair 'p1' has 81 tokens \(chosen 40 \+ rejected 41\), more than the token budget 64"):
        pack_pairs(pairs([(10, 12), (40, 41)]), budget=64, pad_id=0)


def test_packs_the_bundled_data(tmp_path):
    import json

    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in bundled_pairs()))
    result = encode_file(file)
    packing = pack_pairs(result.pairs, budget=1024, pad_id=load_tokenizer().pad_token_id)
    total = sum(p.length for p in result.pairs)
    assert len(packing.micro_batches) == -(-total // 1024)  # as few micro-batches as the tokens allow
    assert sum(mb.num_pairs for mb in packing.micro_batches) == len(result.pairs)


def test_the_rows_that_count_and_the_per_sequence_counts_are_computed_once_here():
    data = pairs([(10, 12), (30, 25), (7, 9), (40, 41), (5, 6)])
    packing = pack_pairs(data, budget=128, pad_id=0, max_pairs=3)
    for mb in packing.micro_batches:
        assert mb.num_seqs == 6 and mb.kept.shape == mb.response_tokens.shape == (6,)
        expected_rows = [i for i in range(128) if mb.labels[i] != IGNORE_INDEX and mb.weights[i] != 0]
        assert mb.active_rows.tolist() == expected_rows
        for p in range(3):
            for s in range(2):
                if p >= mb.num_pairs:
                    assert mb.kept[2 * p + s] == 0 == mb.response_tokens[2 * p + s]
                    continue
                enc = (data[mb.pair_index[p]].chosen, data[mb.pair_index[p]].rejected)[s]
                # The response's targets: the tokens after the prompt, each predicted by the row before.
                assert mb.response_tokens[2 * p + s] == len(enc.input_ids) - enc.prompt_length
                assert mb.kept[2 * p + s] == pytest.approx(sum(enc.weights[enc.prompt_length:]))


def test_max_seqlen_bounds_every_sequence_and_padding_piece():
    data = pairs([(10, 12), (30, 25), (7, 9)])
    packing = pack_pairs(data, budget=100, pad_id=0, max_pairs=2, max_seqlen=30)
    assert packing.max_seqlen == 30
    for mb in packing.micro_batches:
        lengths = np.diff(mb.cu_seqlens)
        assert lengths.max() <= 30 and mb.cu_seqlens[-1] == 100 and np.all(lengths >= 0)
        assert mb.cu_seqlens.shape == (2 * 2 + 1 + 4,)  # 4 padding pieces: ceil(100 / 30)
        for a, b in zip(mb.cu_seqlens[:-1], mb.cu_seqlens[1:]):
            assert mb.position_ids[a:b].tolist() == list(range(b - a))  # positions restart in every piece
    with pytest.raises(ValueError, match="pair 'p1' has a side of 30 tokens, more than max_seqlen 29"):
        pack_pairs(data, budget=100, pad_id=0, max_seqlen=29)


def test_an_empty_micro_batch_has_the_same_shapes_and_counts_nothing():
    from maskdpo.data.packing import empty_like

    packing = pack_pairs(pairs([(10, 12), (30, 25)]), budget=100, pad_id=0, max_pairs=2, max_seqlen=40)
    mb = packing.micro_batches[0]
    empty = empty_like(mb)
    for name in ("input_ids", "position_ids", "cu_seqlens", "labels", "weights", "seq_ids", "pair_index", "kept",
                 "response_tokens"):
        assert getattr(empty, name).shape == getattr(mb, name).shape, name
    assert empty.num_pairs == 0 and empty.active_rows.size == 0 and np.diff(empty.cu_seqlens).max() <= 40


def test_pair_layout():
    import torch

    from maskdpo.data import layout

    assert [layout.seq_id(p, s) for p in range(2) for s in range(2)] == [0, 1, 2, 3]
    assert layout.num_seqs(3) == 6
    chosen, rejected = layout.split_sides(torch.arange(6))
    assert chosen.tolist() == [0, 2, 4] and rejected.tolist() == [1, 3, 5]
    assert layout.join_sides(chosen, rejected).tolist() == list(range(6))
