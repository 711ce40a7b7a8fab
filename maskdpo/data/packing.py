"""Packing encoded pairs into fixed-shape micro-batches for the pipeline.

A micro-batch holds whole pairs (chosen and rejected always together) laid end to end in a token
budget, padding only at the end. Every array has the same shape in every micro-batch, because the
DeepSpeed pipeline sends shapes between stages once.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from .masks import EncodedPair

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MicroBatch:
    """One packed micro-batch. Row i of the model's output predicts labels[i] (already shifted).

    input_ids     (budget,)  token ids, pad_id after the last sequence
    position_ids  (budget,)  0, 1, ... restarting at every sequence (and for the padding run)
    cu_seqlens    (2 * max_pairs + 2,)  int32 boundaries: every sequence, then the padding run,
                  then repeats of `budget` (empty sequences) so the length never changes
    labels        (budget,)  input_ids[i + 1] inside a sequence's response and prompt-template tail;
                  IGNORE_INDEX for prompt targets, the last row of each sequence and padding
    weights       (budget,)  float32 weight of predicting labels[i] (0 where labels are ignored)
    seq_ids       (budget,)  the kernel's sequence id of row i: 2p (chosen) or 2p + 1 (rejected) for
                  the p-th pair of this micro-batch, -1 where labels are ignored
    pair_index    (max_pairs,)  index of each packed pair in the encoded list, -1 for empty slots
    """

    input_ids: np.ndarray
    position_ids: np.ndarray
    cu_seqlens: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    seq_ids: np.ndarray
    pair_index: np.ndarray

    @property
    def num_pairs(self) -> int:
        return int((self.pair_index >= 0).sum())

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.cu_seqlens[2 * self.num_pairs])


@dataclass(frozen=True)
class Packing:
    micro_batches: list[MicroBatch]
    budget: int
    max_pairs: int

    @property
    def efficiency(self) -> float:
        """Real tokens over all token slots."""
        slots = len(self.micro_batches) * self.budget
        return sum(mb.tokens for mb in self.micro_batches) / slots if slots else 0.0


def assign_bins(lengths: list[int], budget: int, max_pairs: int | None = None) -> list[list[int]]:
    """Best-fit decreasing: indices of pairs per micro-batch; deterministic (ties by index).

    Longest pairs first, each into the open micro-batch with the least room that still fits it
    (O(n log n) lookups in a sorted list of (room, bin)); a full micro-batch leaves the list.
    """
    bins: list[list[int]] = []
    open_rooms: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(open_rooms, (lengths[i], -1))
        if at < len(open_rooms):
            room, b = open_rooms.pop(at)
        else:
            room, b = budget, len(bins)
            bins.append([])
        bins[b].append(i)
        if max_pairs is None or len(bins[b]) < max_pairs:
            bisect.insort(open_rooms, (room - lengths[i], b))
    return [sorted(b) for b in bins]


def pack_pairs(pairs: list[EncodedPair], budget: int, pad_id: int, max_pairs: int | None = None) -> Packing:
    """Pack whole pairs into micro-batches of `budget` tokens (see MicroBatch).

    max_pairs bounds the pairs per micro-batch (and fixes the kernel's num_seqs = 2 * max_pairs);
    by default it is the most any micro-batch of this packing needed. A pair longer than the budget
    is a ValueError that names it.
    """
    if budget < 2:
        raise ValueError(f"the token budget must be at least 2, got {budget}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
    for pair in pairs:
        if pair.length > budget:
            raise ValueError(f"pair {pair.pair_id!r} has {pair.length} tokens (chosen {len(pair.chosen.input_ids)} "
                             f"+ rejected {len(pair.rejected.input_ids)}), more than the token budget {budget}")
    bins = assign_bins([p.length for p in pairs], budget, max_pairs)
    max_pairs = max_pairs or max((len(b) for b in bins), default=1)
    return Packing([_fill(pairs, b, budget, pad_id, max_pairs) for b in bins], budget, max_pairs)


def _fill(pairs, indices, budget, pad_id, max_pairs) -> MicroBatch:
    input_ids = np.full(budget, pad_id, dtype=np.int64)
    position_ids = np.zeros(budget, dtype=np.int64)
    labels = np.full(budget, IGNORE_INDEX, dtype=np.int64)
    weights = np.zeros(budget, dtype=np.float32)
    seq_ids = np.full(budget, -1, dtype=np.int64)
    cu_seqlens = np.full(2 * max_pairs + 2, budget, dtype=np.int32)
    pair_index = np.full(max_pairs, -1, dtype=np.int64)
    cu_seqlens[0] = 0
    at = 0
    for p, index in enumerate(indices):
        pair_index[p] = index
        for s, side in enumerate((pairs[index].chosen, pairs[index].rejected)):
            n = len(side.input_ids)
            ids = np.asarray(side.input_ids, dtype=np.int64)
            input_ids[at:at + n] = ids
            position_ids[at:at + n] = np.arange(n)
            # Row i predicts token i + 1 of the same sequence; prompt targets never count.
            targets = slice(at, at + n - 1)
            labels[targets] = ids[1:]
            labels[at:at + max(side.prompt_length - 1, 0)] = IGNORE_INDEX
            weights[targets] = np.asarray(side.weights[1:], dtype=np.float32)
            seq_ids[targets] = 2 * p + s
            at += n
            cu_seqlens[2 * p + s + 1] = at
    ignored = labels == IGNORE_INDEX
    weights[ignored] = 0.0
    seq_ids[ignored] = -1
    position_ids[at:] = np.arange(budget - at)
    return MicroBatch(input_ids, position_ids, cu_seqlens, labels, weights, seq_ids, pair_index)
