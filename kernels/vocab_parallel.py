"""Vocabulary-parallel masked sequence log-probs: each rank holds a contiguous vocabulary shard.

Ranks exchange only per-row statistics (the max, the sums of exponentials with and without the
label, and the label's logit from its owner) and never logits; the per-sequence sums then agree on
every rank. The backward needs no communication for the logits' gradient; the fused-head variant
all-reduces the hidden states' gradient (each shard contributes G_r @ W_r).

Shards are laid out in rank order: rank r holds vocabulary ids [offset_r, offset_r + V_r).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .rows import IGNORE_INDEX, contributes


def shard_offset(local_vocab: int, group, device) -> tuple[int, int]:
    """(this rank's first vocabulary id, the whole vocabulary size)."""
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([local_vocab], device=device), group=group)
    sizes = [int(s) for s in sizes]
    rank = dist.get_rank(group)
    return sum(sizes[:rank]), sum(sizes)


def row_statistics(logits, local_labels, owns, group):
    """(lse, 1 - p_label, label logit) per row, in fp32/fp64, from this rank's logits shard."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    m = x.max(dim=-1).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - shift[:, None])
    column = local_labels.clamp(0, x.shape[1] - 1)[:, None]
    # The sum without the label is taken over the other columns: no cancellation for peaked rows.
    others = e.scatter(1, column, torch.where(owns[:, None], 0.0, e.gather(1, column))).sum(-1)
    sums = torch.stack([e.sum(-1), others, torch.where(owns, x.gather(1, column).squeeze(1), 0.0)])
    dist.all_reduce(sums, group=group)
    total, others, label_logit = sums
    return shift + torch.log(total), others / total, label_logit


class VocabParallelSequenceLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, seq_ids, num_seqs, ignore_index, group):
        offset, _ = shard_offset(logits.shape[1], group, logits.device)
        active = contributes(labels, weights, seq_ids, num_seqs, ignore_index)
        local = labels - offset
        owns = active & (local >= 0) & (local < logits.shape[1])
        lse, rest, label_logit = row_statistics(logits, local, owns, group)
        acc = lse.dtype
        row = torch.where(active, weights.to(acc) * (label_logit - lse), 0.0)
        out = torch.zeros(num_seqs, dtype=acc, device=logits.device).index_add(0, seq_ids[active].long(), row[active])
        ctx.save_for_backward(logits, weights, seq_ids, active, owns, local, lse, rest)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, weights, seq_ids, active, owns, local, lse, rest = ctx.saved_tensors
        acc = lse.dtype
        g = grad_out.to(acc)[torch.where(active, seq_ids, 0).long()] if grad_out.numel() else torch.zeros_like(lse)
        coef = torch.where(active, g * weights.to(acc), 0.0)
        grad = -coef[:, None] * torch.exp(logits.to(acc) - lse[:, None])
        column = local.clamp(0, logits.shape[1] - 1)[:, None]
        label_grad = torch.where(owns, coef * rest, grad.gather(1, column).squeeze(1))
        grad.scatter_(1, column, label_grad[:, None])
        return grad.to(logits.dtype), None, None, None, None, None, None


def vocab_parallel_sequence_logps(logits, labels, weights, seq_ids, num_seqs, *, ignore_index=IGNORE_INDEX, group=None):
    """sequence_logps over a vocabulary shard: logits (N, V_r) on each rank of `group`, labels global."""
    return VocabParallelSequenceLogps.apply(logits, labels, weights, seq_ids, num_seqs, ignore_index, group)
