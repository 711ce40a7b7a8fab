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
- Backward: each chunk's logits are made again, the backward kernel writes their gradient over them
  from the forward's saved per-row statistics (lse and 1 - p_label: no second forward pass), and two
  matmuls give grad_h = G @ W and grad_W += G^T @ h. grad_W is summed
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
from .sequence_logps import backward_into as kernel_backward_into
from .sequence_logps import forward as kernel_forward
from .sequence_logps import segment_sum
from .vocab_parallel import row_logps, shard_backward_into

DEFAULT_CHUNK_ROWS = 2048


class _VocabParallelFunction(torch.autograd.Function):
    """The fused head over a vocabulary shard (VocabShard): per chunk, the PyTorch statistics
    exchanged between ranks (two all-reduces); the backward makes each chunk's logits again and the
    kernel writes their gradient over them from the forward's global statistics (no exchange),
    then one all-reduce of the hidden states' gradient. A process group cannot be a custom op's
    argument, so this path stays an autograd Function."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, weights, seq_ids, num_seqs, ignore_index, chunk_rows, shard, rows,
                accum_dtype):
        h, lab, w, sid = hidden[rows], labels[rows], weights[rows], seq_ids[rows]
        acc = _acc(hidden.dtype)
        per_row = torch.empty(rows.numel(), dtype=acc, device=hidden.device)
        lse, rest = torch.empty_like(per_row), torch.empty_like(per_row)
        local = torch.empty_like(lab)
        active = torch.ones(rows.numel(), dtype=torch.bool, device=hidden.device)  # every compacted row counts
        with torch.no_grad():
            for part in _chunks(rows.numel(), chunk_rows):
                logits = h[part] @ weight.t()
                per_row[part], lse[part], rest[part], local[part] = row_logps(logits, lab[part], w[part], active[part],
                                                                              shard, ignore_index)
                del logits  # freed before the next chunk's matmul: one chunk of logits alive at a time
        ctx.save_for_backward(hidden, weight, rows, local, w, sid, lse, rest)
        ctx.num_seqs, ctx.ignore_index, ctx.chunk_rows, ctx.group = num_seqs, ignore_index, chunk_rows, shard.group
        ctx.accum_dtype = accum_dtype or weight.dtype
        return segment_sum(per_row, sid, num_seqs)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, rows, local, w, sid, lse, rest = ctx.saved_tensors
        h = hidden[rows]
        grad_h = torch.zeros_like(h)
        grad_w = torch.zeros_like(weight, dtype=ctx.accum_dtype)
        for part in _chunks(rows.numel(), ctx.chunk_rows):
            logits = h[part] @ weight.t()
            shard_backward_into(logits, grad_out, logits, local[part], w[part], sid[part], lse[part], rest[part],
                                ctx.num_seqs, ctx.ignore_index)
            _accumulate(logits, h[part], weight, grad_h[part], grad_w)
            del logits  # one chunk of logits alive at a time
        # Every vocabulary shard contributes to the hidden states' gradient.
        torch.distributed.all_reduce(grad_h, group=ctx.group)
        grad_hidden = torch.zeros_like(hidden).index_copy_(0, rows, grad_h)
        return grad_hidden, grad_w.to(weight.dtype), None, None, None, None, None, None, None, None, None


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(n: int, chunk_rows: int):
    for start in range(0, n, chunk_rows):
        yield slice(start, start + chunk_rows)


def _accumulate(grad_logits, h, weight, grad_h_part, grad_w):
    """grad_h = G @ W into its rows, grad_W += G^T @ h."""
    torch.mm(grad_logits, weight, out=grad_h_part)
    if grad_w.dtype == weight.dtype:  # summed in place: cuBLAS adds into the output
        grad_w.addmm_(grad_logits.t(), h)
    else:  # the chunk's product (V x H, W's dtype) is added into the wider buffer
        grad_w += grad_logits.t() @ h


# ---- custom ops: one node each for torch.compile and FakeTensorMode ----

@torch.library.custom_op("maskdpo::linear_sequence_logps_fwd", mutates_args=())
def _forward_op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                seq_ids: torch.Tensor, rows: torch.Tensor, num_seqs: int, ignore_index: int, chunk_rows: int,
                accum_dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (per-sequence sums, lse and 1 - p_label of each contributing row, for the backward).

    Only the contributing rows (`rows`) go through the matmul, chunk by chunk; each chunk's logits
    are freed before the next is made."""
    h, lab, w, sid = hidden[rows], labels[rows], weights[rows], seq_ids[rows]
    acc = _acc(hidden.dtype)
    out = torch.zeros(num_seqs, dtype=acc, device=hidden.device)
    lse = torch.empty(rows.numel(), dtype=acc, device=hidden.device)
    rest = torch.empty_like(lse)
    for part in _chunks(rows.numel(), chunk_rows):
        logits = (h[part] @ weight.t()).unsqueeze(0)
        sums, lse[part], rest[part] = kernel_forward(logits, lab[part], w[part], sid[part], num_seqs, ignore_index)
        out += sums
        del logits
    return out, lse, rest


@_forward_op.register_fake
def _(hidden, weight, labels, weights, seq_ids, rows, num_seqs, ignore_index, chunk_rows, accum_dtype):
    acc = _acc(hidden.dtype)
    n = rows.shape[0]
    return hidden.new_empty((num_seqs,), dtype=acc), hidden.new_empty((n,), dtype=acc), hidden.new_empty((n,), dtype=acc)


@torch.library.custom_op("maskdpo::linear_sequence_logps_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor, seq_ids: torch.Tensor, rows: torch.Tensor, lse: torch.Tensor,
                 rest: torch.Tensor, num_seqs: int, ignore_index: int, chunk_rows: int,
                 accum_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (grad_hidden, grad_weight). Each chunk's logits are made again and the kernel writes their
    gradient over them from the forward's saved statistics (no second forward pass)."""
    h, lab, w, sid = hidden[rows], labels[rows], weights[rows], seq_ids[rows]
    grad_h = torch.zeros_like(h)
    grad_w = torch.zeros_like(weight, dtype=getattr(torch, accum_dtype) if accum_dtype else weight.dtype)
    grad_out = grad_out.contiguous()
    for part in _chunks(rows.numel(), chunk_rows):
        logits = (h[part] @ weight.t()).unsqueeze(0)
        kernel_backward_into(logits, grad_out, logits, lab[part], w[part], sid[part], lse[part], rest[part], num_seqs,
                             ignore_index)
        _accumulate(logits[0], h[part], weight, grad_h[part], grad_w)
        del logits  # one chunk of logits alive at a time
    grad_hidden = torch.zeros_like(hidden).index_copy_(0, rows, grad_h)
    return grad_hidden, grad_w.to(weight.dtype)


@_backward_op.register_fake
def _(grad_out, hidden, weight, labels, weights, seq_ids, rows, lse, rest, num_seqs, ignore_index, chunk_rows,
      accum_dtype):
    return torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    hidden, weight, labels, weights, seq_ids, rows, num_seqs, ignore_index, chunk_rows, accum_dtype = inputs
    _, lse, rest = output
    ctx.save_for_backward(hidden, weight, labels, weights, seq_ids, rows, lse, rest)
    ctx.num_seqs, ctx.ignore_index, ctx.chunk_rows, ctx.accum_dtype = num_seqs, ignore_index, chunk_rows, accum_dtype


def _backward(ctx, grad_out, _grad_lse, _grad_rest):
    hidden, weight, labels, weights, seq_ids, rows, lse, rest = ctx.saved_tensors
    grad_hidden, grad_weight = torch.ops.maskdpo.linear_sequence_logps_bwd(
        grad_out, hidden, weight, labels, weights, seq_ids, rows, lse, rest, ctx.num_seqs, ctx.ignore_index,
        ctx.chunk_rows, ctx.accum_dtype)
    return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


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
    vocab_shard=None,
    active_rows: torch.Tensor | None = None,
    accum_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """sequence_logps(hidden @ lm_head_weight.T, ...) without materialising the logits.

    hidden (N, H) and lm_head_weight (V, H) in the same floating dtype; the rest as in
    `sequence_logps`. Differentiable with respect to hidden and lm_head_weight. Peak extra memory is
    one chunk of chunk_rows x V logits (see the module docstring). With `vocab_shard` (a
    maskdpo.kernels.vocab_parallel.VocabShard: the group, this rank's first id, the whole vocabulary's
    size), lm_head_weight is this rank's contiguous vocabulary shard (V_r, H) and labels are global
    ids; ranks exchange per-row statistics, never logits (kernels/vocab_parallel.py).

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
    vocab = lm_head_weight.shape[0] if vocab_shard is None else vocab_shard.vocab
    if vocab_shard is not None:
        vocab_shard.check("linear_sequence_logps", lm_head_weight.shape[0], hidden.device,
                          should_check_values(check_values, hidden.device))
    check_inputs("linear_sequence_logps", hidden.shape[0], vocab, hidden.device, labels, weights,
                 seq_ids, num_seqs, ignore_index, check_values)
    if active_rows is not None:
        _check_active_rows(active_rows, hidden.device, labels, weights, seq_ids, num_seqs, ignore_index,
                           should_check_values(check_values, hidden.device))
    rows = active_rows
    if rows is None:
        rows = contributing_rows(labels, weights, seq_ids, num_seqs, ignore_index)  # the one host sync
    if vocab_shard is not None:
        return _VocabParallelFunction.apply(hidden, lm_head_weight, labels, weights, seq_ids, num_seqs, ignore_index,
                                            chunk_rows, vocab_shard, rows, accum_dtype)
    # The dtype travels by name ("" for W's own): a plain string in the op's schema.
    accum_name = str(accum_dtype).removeprefix("torch.") if accum_dtype is not None else ""
    # Called through torch.ops (looked up at each call), not the CustomOpDef's cached overload: in a
    # long process (the test suite, after transformers' generate in a worker thread) that cached
    # handle was seen to go stale and the call failed in the dispatcher ("vector::reserve").
    out, _, _ = torch.ops.maskdpo.linear_sequence_logps_fwd(hidden, lm_head_weight, labels, weights, seq_ids, rows,
                                                            num_seqs, ignore_index, chunk_rows, accum_name)
    return out


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
