"""maskdpo.kernels: fused Triton kernels for Mask-DPO, with a plain-PyTorch reference.

Knows nothing of models or data. Public API:
    sequence_logps(logits, labels, weights, seq_ids, num_seqs, *, ignore_index=-100,
                   inplace_backward=False, check_values=None) -> (num_seqs,)
    masked_logps(logits[B, T, V], labels[B, T], weights[B, T]) -> (B,)
    linear_sequence_logps(hidden, lm_head_weight, labels, weights, seq_ids, num_seqs) -> (num_seqs,)
        the same from hidden states, never materialising the whole logits (active_rows= for
        no host sync)
    contributes(labels, weights, seq_ids, num_seqs) -> (N,) bool: which rows count (the one definition,
        with IGNORE_INDEX); contributing_rows(...) -> their indices (for active_rows)
    reference.sequence_logps: the same computation in PyTorch (CPU path and readable spec)

To run the Triton kernels on CPU tensors, set TRITON_INTERPRET=1 before importing this package.
"""

from . import reference
from .linear_sequence_logps import linear_sequence_logps
from .rows import IGNORE_INDEX, contributes, contributing_rows
from .sequence_logps import masked_logps, sequence_logps

__all__ = [
    "IGNORE_INDEX", "contributes", "contributing_rows", "linear_sequence_logps", "masked_logps", "reference",
    "sequence_logps",
]
