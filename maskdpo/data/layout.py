"""The pair layout: where a micro-batch's pairs sit among the kernel's sequence ids.

The p-th pair slot of a micro-batch holds its chosen response at sequence id 2p and its rejected
response at 2p + 1; a micro-batch of `max_pairs` slots has 2 * max_pairs sequences. Everything that
maps pairs to sequences (packing, the reference table, the objective) goes through these helpers.
"""

from __future__ import annotations

SIDES = ("chosen", "rejected")
"""The sides of a pair, in sequence-id order."""


def seq_id(slot: int, side: int) -> int:
    """The sequence id of `side` (0 chosen, 1 rejected) of the pair in slot `slot`."""
    return len(SIDES) * slot + side


def num_seqs(max_pairs: int) -> int:
    """Sequences of a micro-batch with `max_pairs` pair slots."""
    return len(SIDES) * max_pairs


def split_sides(per_seq):
    """(chosen, rejected) views of a per-sequence array or tensor, each indexed by pair slot."""
    return per_seq[0::2], per_seq[1::2]


def join_sides(chosen, rejected):
    """The inverse of split_sides for torch tensors: (P,) and (P,) -> (2P,) in sequence-id order."""
    import torch

    return torch.stack([chosen, rejected], dim=1).reshape(-1)
