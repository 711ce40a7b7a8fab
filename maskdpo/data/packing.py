"""Packing encoded pairs into fixed-shape micro-batches for the pipeline.

A micro-batch holds whole pairs (chosen and rejected always together) laid end to end in a token
budget, padding only at the end. Every array has the same shape in every micro-batch, because the
DeepSpeed pipeline sends shapes between stages once. Everything the trainer, the reference pass and
the objective need to know about a micro-batch is computed here, once (see MicroBatch).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels.rows import IGNORE_INDEX, contributes
from . import layout
from .masks import EncodedPair

__all__ = ["IGNORE_INDEX", "MicroBatch", "Packing", "assign_bins", "empty_like", "pack_pairs"]


@dataclass(frozen=True)
class MicroBatch:
    """One packed micro-batch. Row i of the model's output predicts labels[i] (already shifted).

    input_ids     (budget,)  token ids, pad_id after the last sequence
    position_ids  (budget,)  0, 1, ... restarting at every sequence (and at every padding piece)
    cu_seqlens    (num_seqs + 1 + padding pieces,)  int32 boundaries: every sequence (empty slots are
                  empty sequences), then the padding cut into pieces of at most max_seqlen tokens
                  (empty pieces when there is less padding), so the length never changes and no
                  sequence is longer than max_seqlen
    labels        (budget,)  input_ids[i + 1] inside a sequence's response and prompt-template tail;
                  IGNORE_INDEX for prompt targets, the last row of each sequence and padding
    weights       (budget,)  float32 weight of predicting labels[i] (0 where labels are ignored)
    seq_ids       (budget,)  the kernel's sequence id of row i (see maskdpo.data.layout), -1 where
                  labels are ignored
    pair_index    (max_pairs,)  index of each packed pair in the encoded list, -1 for empty slots
    active_rows   (K,)  int64 indices of the rows that count (kernels.rows.contributes), found here on
                  the CPU so that the GPU never has to count them
    kept          (num_seqs,)  float32 sum of the counted rows' weights per sequence: the kept tokens
                  (for 0/1 masks) and ipo's normaliser
    response_tokens  (num_seqs,)  float32 rows with a label per sequence (the response's targets)
    response_rows (R,)  int64 indices of every row with a label (seq_ids >= 0), in order: the rows the
                  reference pass scores one by one, whatever their weight
    """

    input_ids: np.ndarray
    position_ids: np.ndarray
    cu_seqlens: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    seq_ids: np.ndarray
    pair_index: np.ndarray
    active_rows: np.ndarray
    kept: np.ndarray
    response_tokens: np.ndarray
    response_rows: np.ndarray

    @property
    def num_seqs(self) -> int:
        return layout.num_seqs(self.pair_index.shape[0])

    @property
    def num_pairs(self) -> int:
        return int((self.pair_index >= 0).sum())

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.cu_seqlens[self.num_seqs])


@dataclass(frozen=True)
class Packing:
    micro_batches: list[MicroBatch]
    budget: int
    max_pairs: int
    max_seqlen: int
    """No sequence of any micro-batch (padding pieces included) is longer: attention's bound."""

    @property
    def efficiency(self) -> float:
        """Real tokens over all token slots."""
        slots = len(self.micro_batches) * self.budget
        return sum(mb.tokens for mb in self.micro_batches) / slots if slots else 0.0



def empty_like(mb: MicroBatch) -> MicroBatch:
    """A micro-batch with no pairs and the same shapes as `mb` (pads a data-parallel rank's share)."""
    budget, max_pairs = mb.input_ids.shape[0], mb.pair_index.shape[0]
    pad_pieces = mb.cu_seqlens.shape[0] - layout.num_seqs(max_pairs) - 1
    return _fill([], [], budget, 0, max_pairs, -(-budget // pad_pieces))


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


def pack_pairs(pairs: list[EncodedPair], budget: int, pad_id: int, max_pairs: int | None = None,
               max_seqlen: int | None = None) -> Packing:
    """Pack whole pairs into micro-batches of `budget` tokens (see MicroBatch).

    max_pairs bounds the pairs per micro-batch (and fixes the kernel's num_seqs); by default it is
    the most any micro-batch of this packing needed. max_seqlen (default: the budget) bounds every
    sequence, the padding's pieces included: attention kernels size their work by it, so the data's
    longest side (data.max_length) is a far tighter bound than the budget. A pair longer than the
    budget, or a side longer than max_seqlen, is a ValueError that names it.
    """
    if budget < 2:
        raise ValueError(f"the token budget must be at least 2, got {budget}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
    max_seqlen = budget if max_seqlen is None else max_seqlen
    if not 1 <= max_seqlen <= budget:
        raise ValueError(f"max_seqlen must be in [1, budget {budget}], got {max_seqlen}")
    for pair in pairs:
        if pair.length > budget:
            raise ValueError(f"pair {pair.pair_id!r} has {pair.length} tokens (chosen {len(pair.chosen.input_ids)} "
                             f"+ rejected {len(pair.rejected.input_ids)}), more than the token budget {budget}")
        longest = max(len(pair.chosen.input_ids), len(pair.rejected.input_ids))
        if longest > max_seqlen:
            raise ValueError(f"pair {pair.pair_id!r} has a side of {longest} tokens, more than max_seqlen {max_seqlen}")
    bins = assign_bins([p.length for p in pairs], budget, max_pairs)
    max_pairs = max_pairs or max((len(b) for b in bins), default=1)
    return Packing([_fill(pairs, b, budget, pad_id, max_pairs, max_seqlen) for b in bins], budget, max_pairs, max_seqlen)


def _fill(pairs, indices, budget, pad_id, max_pairs, max_seqlen) -> MicroBatch:
    input_ids = np.full(budget, pad_id, dtype=np.int64)
    position_ids = np.zeros(budget, dtype=np.int64)
    labels = np.full(budget, IGNORE_INDEX, dtype=np.int64)
    weights = np.zeros(budget, dtype=np.float32)
    seq_ids = np.full(budget, -1, dtype=np.int64)
    sequences = layout.num_seqs(max_pairs)
    pad_pieces = -(-budget // max_seqlen)
    cu_seqlens = np.zeros(sequences + 1 + pad_pieces, dtype=np.int32)
    pair_index = np.full(max_pairs, -1, dtype=np.int64)
    at = 0
    for p, index in enumerate(indices):
        pair_index[p] = index
        for s, side in enumerate((pairs[index].chosen, pairs[index].rejected)):
            n = len(side.input_ids)
            ids = side.input_ids
            input_ids[at:at + n] = ids
            position_ids[at:at + n] = np.arange(n)
            # Row i predicts token i + 1 of the same sequence; prompt targets never count.
            targets = slice(at, at + n - 1)
            labels[targets] = ids[1:]
            labels[at:at + max(side.prompt_length - 1, 0)] = IGNORE_INDEX
            weights[targets] = side.weights[1:]
            seq_ids[targets] = layout.seq_id(p, s)
            at += n
            cu_seqlens[layout.seq_id(p, s) + 1] = at
    cu_seqlens[layout.num_seqs(len(indices)) + 1:sequences + 1] = at  # empty slots: empty sequences
    # The padding after the last sequence, in pieces of at most max_seqlen tokens.
    pieces = np.minimum(at + max_seqlen * np.arange(1, pad_pieces + 1), budget)
    cu_seqlens[sequences + 1:] = pieces
    ignored = labels == IGNORE_INDEX
    weights[ignored] = 0.0
    seq_ids[ignored] = -1
    for start, end in zip(np.concatenate([[at], pieces[:-1]]), pieces):
        position_ids[start:end] = np.arange(end - start)
    counted = contributes(torch.from_numpy(labels), torch.from_numpy(weights), torch.from_numpy(seq_ids), sequences).numpy()
    active_rows = np.flatnonzero(counted).astype(np.int64)
    kept = np.bincount(seq_ids[counted], weights=weights[counted], minlength=sequences).astype(np.float32)
    response_tokens = np.bincount(seq_ids[seq_ids >= 0], minlength=sequences).astype(np.float32)
    return MicroBatch(input_ids, position_ids, cu_seqlens, labels, weights, seq_ids, pair_index, active_rows, kept,
                      response_tokens, np.flatnonzero(seq_ids >= 0).astype(np.int64))
