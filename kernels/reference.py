"""Plain-PyTorch `sequence_logps`: the CPU path without the Triton interpreter, and a readable spec.

Same signature and semantics as `maskdpo.kernels.sequence_logps`. Work is chunked over rows so that
no fp32 copy of the whole (N, V) logits is ever held: the forward keeps only the fp32 log-sum-exp per
row, and the backward recomputes each chunk's softmax.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .checks import check_inplace, check_inputs, check_logits
from .rows import IGNORE_INDEX, contributes

# Rows per chunk: bounds the fp32 scratch to CHUNK_ELEMENTS values whatever the vocabulary.
CHUNK_ELEMENTS = 1 << 24


def _chunks(n: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _active(labels, weights, seq_ids, num_seqs, ignore_index):
    """Rows that contribute: a label, a sequence, and a non-zero weight (as in the kernel)."""
    return contributes(labels, weights, seq_ids, num_seqs, ignore_index)


def forward(logits, labels, weights, seq_ids, num_seqs, ignore_index=IGNORE_INDEX):
    """(N, V) logits -> (per-sequence sums, lse per row, 1 - p_label per row), as the kernel's forward.

    1 - p_label is the sum over the other classes: exact for peaked rows where p_label ~ 1."""
    n, vocab = logits.shape
    acc = _acc(logits.dtype)
    active = _active(labels, weights, seq_ids, num_seqs, ignore_index)
    safe_labels = torch.where(active, labels, 0).long().clamp(0, max(vocab - 1, 0))
    lse = torch.zeros(n, dtype=acc, device=logits.device)
    rest = torch.zeros(n, dtype=acc, device=logits.device)
    row_logps = torch.zeros(n, dtype=acc, device=logits.device)
    for rows in _chunks(n, vocab):
        x = logits[rows].to(acc)
        lse[rows] = torch.logsumexp(x, dim=-1)
        label = safe_labels[rows, None]
        rest[rows] = torch.exp(x - lse[rows, None]).scatter(1, label, 0.0).sum(-1)
        row_logps[rows] = weights[rows].to(acc) * (x.gather(1, label).squeeze(1) - lse[rows])
    in_range = (labels >= 0) & (labels < vocab)
    row_logps = torch.where(active, torch.where(in_range, row_logps, float("nan")), 0.0)
    return segment_sum(row_logps, seq_ids, num_seqs), lse, rest  # rows that do not contribute add 0


def segment_sum(row_values, seq_ids, num_seqs):
    """out[s] = the sum of row_values over the rows of sequence s (id -1: none); an id outside
    [-1, num_seqs) makes every output NaN, as the kernel's segment sum does. No host read."""
    out = torch.zeros(num_seqs, dtype=row_values.dtype, device=row_values.device)
    if num_seqs == 0:
        return out
    valid = (seq_ids >= 0) & (seq_ids < num_seqs)
    out.index_add_(0, torch.where(valid, seq_ids, 0).long(), torch.where(valid, row_values, 0.0))
    bad = ((seq_ids < -1) | (seq_ids >= num_seqs)).any()
    return torch.where(bad, float("nan"), out)


def backward_into(grad, grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index=IGNORE_INDEX):
    """The logits' gradient g[s_i] * w_i * (onehot(y_i) - softmax(logits_i)) written into `grad` (N, V)
    (which may be the logits themselves), from the forward's lse and 1 - p_label."""
    n, vocab = logits.shape
    acc = lse.dtype
    active = _active(labels, weights, seq_ids, num_seqs, ignore_index)
    safe_labels = torch.where(active, labels, 0).long().clamp(0, max(vocab - 1, 0))
    g = grad_out.to(acc)[torch.where(active, seq_ids, 0).long()] if grad_out.numel() else torch.zeros_like(lse)
    coef = torch.where(active, g * weights.to(acc), 0.0)
    # A label outside [0, V) has no column here (as in the kernel): a vocabulary shard's row whose
    # label another rank holds gets the softmax part only.
    in_range = (labels >= 0) & (labels < vocab)
    for rows in _chunks(n, vocab):
        chunk = -coef[rows, None] * torch.exp(logits[rows].to(acc) - lse[rows, None])
        column = safe_labels[rows, None]
        label_grad = torch.where(in_range[rows], coef[rows] * rest[rows], chunk.gather(1, column).squeeze(1))
        chunk.scatter_(1, column, label_grad[:, None])
        grad[rows] = chunk
    return grad


class _ReferenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward):
        out, lse, rest = forward(logits, labels, weights, seq_ids, num_seqs, ignore_index)
        ctx.save_for_backward(logits, labels, weights, seq_ids, lse, rest)
        ctx.num_seqs, ctx.ignore_index, ctx.inplace_backward = num_seqs, ignore_index, inplace_backward
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, labels, weights, seq_ids, lse, rest = ctx.saved_tensors
        grad = logits if ctx.inplace_backward else torch.empty_like(logits)
        backward_into(grad, grad_out, logits, labels, weights, seq_ids, lse, rest, ctx.num_seqs, ctx.ignore_index)
        if ctx.inplace_backward:
            torch.autograd.graph.increment_version(logits)  # others that saved the logits must not use them
        return grad, None, None, None, None, None, None


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    seq_ids: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    inplace_backward: bool = False,
    check_values: bool | None = None,
) -> torch.Tensor:
    """PyTorch implementation of `maskdpo.kernels.sequence_logps` (see there for the arguments)."""
    check_logits("sequence_logps", logits, ndim=2)
    check_inputs("sequence_logps", logits.shape[0], logits.shape[1], logits.device, labels, weights,
                 seq_ids, num_seqs, ignore_index, check_values)
    check_inplace("sequence_logps", logits, inplace_backward)
    return _ReferenceFunction.apply(logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward)
