"""maskdpo.kernels: fused Triton kernels for Mask-DPO, with a plain-PyTorch reference.

Knows nothing of models or data. Public API:
    sequence_logps(logits, labels, weights, seq_ids, num_seqs, *, ignore_index=-100,
                   inplace_backward=False, check_values=None) -> (num_seqs,)
    masked_logps(logits[B, T, V], labels[B, T], weights[B, T]) -> (B,)
    reference.sequence_logps: the same computation in PyTorch (CPU path and readable spec)

To run the Triton kernels on CPU tensors, set TRITON_INTERPRET=1 before importing this package.
"""

from . import reference
from .sequence_logps import masked_logps, sequence_logps

__all__ = ["masked_logps", "reference", "sequence_logps"]
