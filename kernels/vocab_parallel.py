"""Vocabulary-parallel masked sequence log-probs: each rank holds a contiguous vocabulary shard.

Ranks exchange only per-row statistics (the max, the sums of exponentials with and without the
label, and the label's logit from its owner: two all-reduces per call, or per chunk of the fused
head) and never logits; the per-sequence sums then agree on every rank. The backward needs no
communication for the logits' gradient: the Triton backward kernel (the PyTorch reference on CPU)
writes it from the forward's global statistics, each rank over its own columns; the fused-head
variant then all-reduces the hidden states' gradient once (each shard contributes G_r @ W_r).

Where each rank's shard lies is a fact of the layout (VocabShard), given once, never asked of the
group at each call: no call reads a device value on the host. The per-sequence sums are a segment
sum in ascending row order (no float atomics): bitwise the same from run to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .checks import check_inputs, check_logits, should_check_values
from .rows import IGNORE_INDEX, contributes
from .sequence_logps import backward_into, segment_sum


@dataclass(frozen=True)
class VocabShard:
    """This rank's contiguous rows of the vocabulary: ids [start, start + V_r), V_r the size of the
    logits' (or the LM head weight's) vocabulary dimension on this rank."""

    group: object
    """The torch.distributed group the vocabulary is split over (None: the default group)."""
    start: int
    """The first vocabulary id this rank holds."""
    vocab: int
    """The whole vocabulary's size."""

    @classmethod
    def exchange(cls, local_vocab: int, group=None, device=None) -> VocabShard:
        """The shard of a layout whose ranks hold, in rank order, their `local_vocab` rows: found
        with one all_gather and a host read, so call it once per layout, not per step."""
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(group))]
        dist.all_gather(sizes, torch.tensor([local_vocab], device=device), group=group)
        sizes = [int(s) for s in sizes]
        return cls(group, sum(sizes[:dist.get_rank(group)]), sum(sizes))

    def check(self, name: str, local_vocab: int, device, check_values: bool) -> None:
        """Refuse a shard that does not fit the vocabulary; with check_values (CPU by default), also
        a layout whose shards do not tile it in rank order: one all_gather of every rank's claim, so
        that every rank refuses alike (one rank alone raising would leave the others waiting in the
        next collective)."""
        if not (isinstance(self.start, int) and isinstance(self.vocab, int)
                and 0 <= self.start and self.start + local_vocab <= self.vocab):
            raise ValueError(f"{name}: vocab_shard {self.start}..{self.start + local_vocab} (start + this rank's "
                             f"{local_vocab} rows) does not fit a vocabulary of {self.vocab}")
        if not check_values:
            return
        claims = [torch.zeros(3, dtype=torch.int64, device=device) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(claims, torch.tensor([local_vocab, self.start, self.vocab], device=device), group=self.group)
        sizes, starts, vocabs = zip(*(c.tolist() for c in claims))
        for rank, (start, vocab) in enumerate(zip(starts, vocabs)):
            if (start, vocab) != (sum(sizes[:rank]), sum(sizes)):
                raise ValueError(f"{name}: the vocab_shard of rank {rank} says its ids start at {start} of {vocab}, "
                                 f"but the ranks' shards in rank order put them at {sum(sizes[:rank])} of {sum(sizes)}")


def local_labels(labels, active, shard: VocabShard, local_vocab: int, ignore_index: int):
    """(labels as column indices of this shard, whether this rank owns each row's label). A
    contributing row whose label another rank holds gets a column outside [0, V_r) (the kernels
    then give it no label column); a row that contributes nothing keeps ignore_index."""
    local = labels - shard.start
    owns = active & (local >= 0) & (local < local_vocab)
    outside = local_vocab if ignore_index != local_vocab else local_vocab + 1
    return torch.where(owns, local, torch.where(active, outside, ignore_index)), owns


def row_statistics(logits, local, owns, group):
    """(lse, 1 - p_label, label logit) per row, in fp32/fp64, from this rank's logits shard."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(acc)
    m = x.max(dim=-1).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - shift[:, None])
    column = local.clamp(0, x.shape[1] - 1)[:, None]
    # The sum without the label is taken over the other columns: no cancellation for peaked rows.
    others = e.scatter(1, column, torch.where(owns[:, None], 0.0, e.gather(1, column))).sum(-1)
    sums = torch.stack([e.sum(-1), others, torch.where(owns, x.gather(1, column).squeeze(1), 0.0)])
    dist.all_reduce(sums, group=group)
    total, others, label_logit = sums
    return shift + torch.log(total), others / total, label_logit


def row_logps(logits, labels, weights, active, shard: VocabShard, ignore_index: int):
    """-> (w * log p(label) per row, 0 where the row contributes nothing; lse and 1 - p_label per
    row, global; the labels as this shard's columns)."""
    local, owns = local_labels(labels, active, shard, logits.shape[1], ignore_index)
    lse, rest, label_logit = row_statistics(logits, local, owns, shard.group)
    rows = torch.where(active, weights.to(lse.dtype) * (label_logit - lse), 0.0)
    return rows, lse, rest, local


def shard_backward_into(grad, grad_out, logits, local, weights, seq_ids, lse, rest, num_seqs, ignore_index):
    """This shard's logits gradient, g[s] * w * (onehot(label) - softmax), written into `grad`
    (N, V_r) from the global lse and 1 - p_label: the sequence-logps backward kernel, whose rows
    with a label outside [0, V_r) get no label column."""
    backward_into(grad.unsqueeze(0), grad_out.contiguous(), logits.unsqueeze(0), local, weights, seq_ids, lse, rest,
                  num_seqs, ignore_index)
    return grad


class VocabParallelSequenceLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weights, seq_ids, num_seqs, ignore_index, shard):
        active = contributes(labels, weights, seq_ids, num_seqs, ignore_index)
        rows, lse, rest, local = row_logps(logits, labels, weights, active, shard, ignore_index)
        ctx.save_for_backward(logits, local, weights, seq_ids, lse, rest)
        ctx.num_seqs, ctx.ignore_index = num_seqs, ignore_index
        return segment_sum(rows, seq_ids, num_seqs)  # rows that do not contribute add 0

    @staticmethod
    def backward(ctx, grad_out):
        logits, local, weights, seq_ids, lse, rest = ctx.saved_tensors
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        shard_backward_into(grad, grad_out, logits, local, weights, seq_ids, lse, rest, ctx.num_seqs, ctx.ignore_index)
        return grad, None, None, None, None, None, None


def vocab_parallel_sequence_logps(logits, labels, weights, seq_ids, num_seqs, *, shard: VocabShard,
                                  ignore_index=IGNORE_INDEX, check_values: bool | None = None):
    """sequence_logps over a vocabulary shard: logits (N, V_r) this rank's contiguous columns (ids
    shard.start to shard.start + V_r) on each rank of shard.group, labels global ids; the same
    arguments and checks as sequence_logps (the fused head's form: linear_sequence_logps with
    vocab_shard=)."""
    check_logits("vocab_parallel_sequence_logps", logits, ndim=2)
    check_inputs("vocab_parallel_sequence_logps", logits.shape[0], shard.vocab, logits.device, labels, weights,
                 seq_ids, num_seqs, ignore_index, check_values)
    shard.check("vocab_parallel_sequence_logps", logits.shape[1], logits.device,
                should_check_values(check_values, logits.device))
    return VocabParallelSequenceLogps.apply(logits, labels, weights, seq_ids, num_seqs, ignore_index, shard)
