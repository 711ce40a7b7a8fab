"""Per-sequence masked log-probs straight from hidden states: the LM head fused with the kernel.

    seq_logps = linear_sequence_logps(hidden, lm_head_weight, labels, weights, seq_ids, num_seqs)
    # == sequence_logps(hidden @ lm_head_weight.T, labels, weights, seq_ids, num_seqs)

Design: chunked matmuls + the fused sequence-logps kernel, never the whole logits.
- Rows that contribute nothing (ignored label, seq id -1, weight 0: prompt tokens, masked sentences,
  padding) are compacted away before any matmul. Their number sizes the chunks, so it must be known
  on the host: pass `active_rows` (the contributing rows' indices, computed where the data already
  is on the host, as the pipeline's data loader does with `contributing_rows`) and nothing is
  synchronised; without it they are found on the device at the cost of one host synchronisation.
- Forward: for each chunk of `chunk_rows` contributing rows, logits = h @ W^T (chunk x V, in the
  compute dtype) go through the kernel's forward and are freed.
- Backward: each chunk's logits are recomputed, the kernel writes their gradient in place
  (inplace_backward), and two matmuls give grad_h = G @ W and grad_W += G^T @ h. grad_W is summed
  in W's own dtype by default (it is the gradient returned: no V x H buffer more; in bf16 one
  rounding per chunk, as Liger's fused linear losses do); accum_dtype=torch.float32 sums in an fp32
  buffer instead (4 * V * H bytes more, 2.1 GB for Llama-3 8B's head, plus each chunk's V x H
  product in W's dtype while it is added: the products are rounded once each, the sum never).
Extra memory, beyond the inputs and the gradients returned: one chunk of logits (chunk_rows x V in
the compute dtype; its gradient overwrites it) plus the compacted rows and their gradient
(2 x n_active x H). With the default chunk of 2048 rows, V = 128256 and H = 4096 in bf16 that is
0.53 GB of logits, plus 16 KB per contributing row: 0.66 GB for 8192 of them (N = 16384 with half
the tokens kept), whatever V x N.
"""

from __future__ import annotations

import torch

from .checks import check_inputs, check_logits, should_check_values
from .rows import IGNORE_INDEX, contributing_rows
from .sequence_logps import sequence_logps
from .vocab_parallel import shard_offset, vocab_parallel_sequence_logps

DEFAULT_CHUNK_ROWS = 2048


def _chunk_logps(logits, labels, weights, seq_ids, num_seqs, ignore_index, group, inplace):
    if group is not None:  # a vocabulary shard: statistics are exchanged, never logits
        return vocab_parallel_sequence_logps(logits, labels, weights, seq_ids, num_seqs, ignore_index=ignore_index,
                                             group=group)
    return sequence_logps(logits, labels, weights, seq_ids, num_seqs, ignore_index=ignore_index,
                          inplace_backward=inplace, check_values=False)


class LinearSequenceLogpsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, weights, seq_ids, num_seqs, ignore_index, chunk_rows, group, rows,
                accum_dtype):
        if rows is None:
            rows = contributing_rows(labels, weights, seq_ids, num_seqs, ignore_index)  # the one host sync
        h, lab, w, sid = hidden[rows], labels[rows], weights[rows], seq_ids[rows]
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        out = torch.zeros(num_seqs, dtype=acc, device=hidden.device)
        with torch.no_grad():
            for start in range(0, rows.numel(), chunk_rows):
                part = slice(start, start + chunk_rows)
                logits = h[part] @ weight.t()
                out += _chunk_logps(logits, lab[part], w[part], sid[part], num_seqs, ignore_index, group, False)
                del logits  # freed before the next chunk's matmul: one chunk of logits alive at a time
        ctx.save_for_backward(hidden, weight, rows, lab, w, sid)
        ctx.num_seqs, ctx.ignore_index, ctx.chunk_rows, ctx.group = num_seqs, ignore_index, chunk_rows, group
        ctx.accum_dtype = accum_dtype or weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, rows, lab, w, sid = ctx.saved_tensors
        h = hidden[rows]
        grad_h = torch.zeros_like(h)
        grad_w = torch.zeros_like(weight, dtype=ctx.accum_dtype)
        for start in range(0, rows.numel(), ctx.chunk_rows):
            part = slice(start, start + ctx.chunk_rows)
            with torch.enable_grad():
                logits = (h[part] @ weight.t()).detach().requires_grad_(True)
                produced = logits.view_as(logits)  # a non-leaf view: the gradient overwrites the logits
                sums = _chunk_logps(produced, lab[part], w[part], sid[part], ctx.num_seqs, ctx.ignore_index,
                                    ctx.group, True)
                (grad_logits,) = torch.autograd.grad(sums, logits, grad_out)
            torch.mm(grad_logits, weight, out=grad_h[part])
            if grad_w.dtype == weight.dtype:  # summed in place: cuBLAS adds into the output
                grad_w.addmm_(grad_logits.t(), h[part])
            else:  # the chunk's product (V x H, W's dtype) is added into the wider buffer
                grad_w += grad_logits.t() @ h[part]
            del logits, produced, sums, grad_logits  # one chunk of logits alive at a time
        if ctx.group is not None:  # every vocabulary shard contributes to the hidden states' gradient
            torch.distributed.all_reduce(grad_h, group=ctx.group)
        grad_hidden = torch.zeros_like(hidden).index_copy_(0, rows, grad_h)
        return grad_hidden, grad_w.to(weight.dtype), None, None, None, None, None, None, None, None, None


def linear_sequence_logps(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    seq_ids: torch.Tensor,
    num_seqs: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    check_values: bool | None = None,
    vocab_group=None,
    active_rows: torch.Tensor | None = None,
    accum_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """sequence_logps(hidden @ lm_head_weight.T, ...) without materialising the logits.

    hidden (N, H) and lm_head_weight (V, H) in the same floating dtype; the rest as in
    `sequence_logps`. Differentiable with respect to hidden and lm_head_weight. Peak extra memory is
    one chunk of chunk_rows x V logits (see the module docstring). With `vocab_group` (a
    torch.distributed group), lm_head_weight is this rank's contiguous vocabulary shard (V_r, H) and
    labels are global ids; ranks exchange per-row statistics, never logits (kernels/vocab_parallel.py).

    active_rows: the ascending int64 indices of the contributing rows (`contributing_rows` of the
    same labels, weights and seq_ids), on hidden's device. Given, the call makes no host
    synchronisation; not given, they are found with one. They are checked against the data when
    values are checked (check_values, by default on CPU only): on CUDA a row missing from them is
    silently left out of the sums.

    chunk_rows: contributing rows per chunk of logits (the memory bound, see the module docstring).
    accum_dtype: the dtype lm_head_weight's gradient is summed in across chunks; None: its own
    (no extra memory), torch.float32: an fp32 buffer (4 * V * H bytes more, and a V x H product in
    W's dtype per chunk while it is added; the running sum is never rounded to W's dtype).
    """
    check_logits("linear_sequence_logps", hidden, ndim=2)
    if not isinstance(lm_head_weight, torch.Tensor) or lm_head_weight.dim() != 2 \
            or lm_head_weight.shape[1] != hidden.shape[1]:
        shape = tuple(lm_head_weight.shape) if isinstance(lm_head_weight, torch.Tensor) else type(lm_head_weight).__name__
        raise ValueError(f"linear_sequence_logps: lm_head_weight must have shape (V, {hidden.shape[1]}) to match "
                         f"hidden, got {shape}")
    if lm_head_weight.dtype != hidden.dtype or lm_head_weight.device != hidden.device:
        raise ValueError(f"linear_sequence_logps: lm_head_weight is {lm_head_weight.dtype} on {lm_head_weight.device} "
                         f"but hidden is {hidden.dtype} on {hidden.device}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"linear_sequence_logps: chunk_rows must be a positive int, got {chunk_rows!r}")
    if accum_dtype is not None and (not isinstance(accum_dtype, torch.dtype) or not accum_dtype.is_floating_point
                                    or torch.promote_types(accum_dtype, lm_head_weight.dtype) != accum_dtype):
        raise ValueError(f"linear_sequence_logps: accum_dtype must be None or a floating dtype that holds every "
                         f"value of lm_head_weight's ({lm_head_weight.dtype}), got {accum_dtype!r}")
    vocab = lm_head_weight.shape[0]
    if vocab_group is not None:
        vocab = shard_offset(vocab, vocab_group, hidden.device)[1]
    check_inputs("linear_sequence_logps", hidden.shape[0], vocab, hidden.device, labels, weights,
                 seq_ids, num_seqs, ignore_index, check_values)
    if active_rows is not None:
        _check_active_rows(active_rows, hidden.device, labels, weights, seq_ids, num_seqs, ignore_index,
                           should_check_values(check_values, hidden.device))
    return LinearSequenceLogpsFunction.apply(hidden, lm_head_weight, labels, weights, seq_ids, num_seqs,
                                             ignore_index, chunk_rows, vocab_group, active_rows, accum_dtype)


def _check_active_rows(active_rows, device, labels, weights, seq_ids, num_seqs, ignore_index, check_values):
    if not isinstance(active_rows, torch.Tensor) or active_rows.dim() != 1 or active_rows.dtype != torch.int64 \
            or active_rows.device != device:
        got = (f"{active_rows.dtype} of shape {tuple(active_rows.shape)} on {active_rows.device}"
               if isinstance(active_rows, torch.Tensor) else type(active_rows).__name__)
        raise ValueError(f"linear_sequence_logps: active_rows must be a 1-D int64 tensor on {device}, got {got}")
    if not check_values:
        return
    expected = contributing_rows(labels, weights, seq_ids, num_seqs, ignore_index)
    if not torch.equal(active_rows, expected):
        common = min(active_rows.numel(), expected.numel())
        differ = (active_rows[:common] != expected[:common]).nonzero()
        at = int(differ[0, 0]) if differ.numel() else common
        raise ValueError(
            f"linear_sequence_logps: active_rows ({active_rows.numel()} rows) are not the contributing rows "
            f"({expected.numel()} rows: label != ignore_index, 0 <= seq id < num_seqs, weight != 0); they first "
            f"differ at position {at}: expected {expected[at].item() if at < expected.numel() else 'the end'}, "
            f"got {active_rows[at].item() if at < active_rows.numel() else 'the end'}")
