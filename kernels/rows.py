"""Which rows count: the one definition every path uses (the Triton kernels' `_load_row` is the same
test in device code).

A row i contributes `weights[i] * log p(labels[i])` to sequence `seq_ids[i]` when its label is not
`ignore_index`, its sequence id is in [0, num_seqs) and its weight is not 0. Other rows (prompt
tokens, masked sentences, padding) contribute nothing and are never read.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""The label of a row that predicts nothing (PyTorch's cross-entropy convention)."""


def contributes(labels: torch.Tensor, weights: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(N,) bool: whether each row contributes to its sequence's sum."""
    return (labels != ignore_index) & (seq_ids >= 0) & (seq_ids < num_seqs) & (weights != 0)


def contributing_rows(labels: torch.Tensor, weights: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Ascending int64 indices of the rows that contribute. On CUDA tensors this syncs with the host
    (the count sizes the result); on the CPU it is free, so data loaders call it there and pass the
    result as `active_rows`."""
    return contributes(labels, weights, seq_ids, num_seqs, ignore_index).nonzero().squeeze(1)
