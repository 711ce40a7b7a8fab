"""Fused per-sequence weighted log-probs: log-softmax, label gather and weighted sum in one pass.

For rows i of logits (N, V) with labels y_i, weights w_i and sequence ids s_i this computes

    out[s] = sum_{i: s_i = s} w_i * log_softmax(logits_i)[y_i]

and its gradient g[s_i] * w_i * (onehot(y_i) - softmax(logits_i)) with respect to the logits.

Layout of the work (one Triton program per row, the vocabulary streamed in blocks):
- forward: one pass over the row with an online softmax (running max and rescaled sums, fp32);
  the label logit is one scalar load. Saves per row the fp32 log-sum-exp, 1 - p(label), and the
  row's weighted log-prob. The per-sequence sums are then taken by a second, tiny kernel over the N row values in
  a fixed order (rows sorted stably by sequence id), so results are bitwise deterministic: no
  float atomics anywhere.
- rows that contribute nothing (ignored label, seq id -1, weight 0: prompt tokens and masked
  sentences) are never read: the forward skips them and the backward only writes their zeros.
- backward: one pass, one vectorised store per element. The true-class gradient is
  coef * (1 - p_y) with 1 - p_y = sum_{j != y} exp(x_j - m) / sum_j exp(x_j - m) accumulated by
  the forward, instead of coef * (p_y - 1): for peaked rows (p_y close to 1) that subtraction
  would cancel and lose the gradient.
- `inplace_backward=True` writes the gradient over the logits' own storage (each element is read
  before it is overwritten, by the same thread), saving an N x V allocation.

Invalid values on CUDA (where checking them would need a host sync) are never silently dropped: a
row with a label outside [0, V) gives NaN for its sequence, and a sequence id outside [-1, num_seqs)
makes every output NaN. Pass `check_values=True` to get a ValueError instead.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

from . import reference
from .checks import check_inplace, check_inputs, check_logits
from .rows import IGNORE_INDEX


@triton.jit
def _column_offsets(idx, stride, WIDE: tl.constexpr):
    """Element offsets of columns idx. A unit stride (the usual layout) stays in int32, which keeps
    the loads vectorised; a column stride that can reach 2**31 elements is multiplied in int64."""
    if WIDE:
        return idx.to(tl.int64) * stride
    else:
        return idx * stride


@triton.jit
def _store_grad(ptrs, x, mask, BF16_RTNE_BY_HAND: tl.constexpr):
    """Store fp32 gradient values in the gradient's dtype, rounded to nearest-even.

    The Triton interpreter truncates fp32 -> bf16 (and its RTNE mode loses the carry), which would
    double the gradient's rounding error on the CPU; there we round with integer ops as PyTorch
    does. On a GPU the store's own conversion rounds to nearest-even in hardware.
    """
    if BF16_RTNE_BY_HAND:
        bits = x.to(tl.uint32, bitcast=True)
        bits = tl.where(x != x, 0x7FC00000, bits + 0x7FFF + ((bits >> 16) & 1))
        x = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    tl.store(ptrs, x, mask=mask)


@triton.jit
def _load_row(labels_ptr, seq_ids_ptr, weights_ptr, row, num_seqs, ignore_index, ACC: tl.constexpr):
    """A row's label, sequence id and weight, and whether it contributes at all.

    Rows with an ignored label, no sequence (-1), an out-of-range sequence id (those poison every
    output in the segment sum instead) or weight 0 contribute nothing: their logits are never read.
    """
    label = tl.load(labels_ptr + row).to(tl.int64)
    seq = tl.load(seq_ids_ptr + row).to(tl.int64)
    w = tl.load(weights_ptr + row).to(ACC)
    active = (label != ignore_index) & (seq >= 0) & (seq < num_seqs) & (w != 0)  # rows.contributes
    return label, seq, w, active


@triton.jit
def _sequence_logps_fwd_kernel(
    logits_ptr, labels_ptr, weights_ptr, seq_ids_ptr,
    lse_ptr, rest_ptr, row_logps_ptr,
    V, T, num_seqs, ignore_index,
    stride_b, stride_t, stride_v,
    BLOCK_V: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label, seq, w, active = _load_row(labels_ptr, seq_ids_ptr, weights_ptr, row, num_seqs, ignore_index, ACC)
    lse = tl.zeros([], ACC)
    rest = tl.zeros([], ACC)
    row_logp = tl.zeros([], ACC)
    if active:
        # Logits are addressed as a (B, T, V) view so that slices such as logits[:, :-1] need no copy.
        row_ptr = logits_ptr + (row // T) * stride_b + (row % T) * stride_t
        in_range = (label >= 0) & (label < V)
        label32 = tl.where(in_range, label, -1).to(tl.int32)
        cols = tl.arange(0, BLOCK_V)
        m = tl.full([], float("-inf"), ACC)
        s = tl.zeros([], ACC)        # sum of exp(x_j - m) over the row so far
        s_other = tl.zeros([], ACC)  # the same without the label: 1 - p_label = s_other / s, exactly
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            x = tl.load(row_ptr + _column_offsets(idx, stride_v, WIDE), mask=idx < V,
                        other=float("-inf")).to(ACC)
            new_m = tl.maximum(m, tl.max(x, 0))
            # While every logit so far is -inf, shift by 0 instead: -inf - -inf would be NaN.
            shift = tl.where(new_m == float("-inf"), 0.0, new_m)
            alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - shift))
            e = tl.exp(x - shift)
            s = s * alpha + tl.sum(e, 0)
            s_other = s_other * alpha + tl.sum(tl.where(idx == label32, 0.0, e), 0)
            m = new_m
        lse = m + tl.log(s)
        rest = s_other / s
        x_label = tl.load(row_ptr + tl.where(in_range, label, 0) * stride_v).to(ACC)
        row_logp = w * tl.where(in_range, x_label - lse, float("nan"))
    tl.store(lse_ptr + row, lse)
    tl.store(rest_ptr + row, rest)
    tl.store(row_logps_ptr + row, row_logp)


@triton.jit
def _segment_sum_kernel(
    row_logps_ptr, order_ptr, sorted_ids_ptr, bounds_ptr, out_ptr,
    N, num_seqs,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    # Program s sums the rows of sequence s in ascending row order: bitwise reproducible.
    seq = tl.program_id(0)
    start = tl.load(bounds_ptr + seq)
    end = tl.load(bounds_ptr + seq + 1)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for first in range(start, end, BLOCK):
        idx = first + offs
        keep = idx < end
        rows = tl.load(order_ptr + idx, mask=keep, other=0)
        acc += tl.load(row_logps_ptr + rows, mask=keep, other=0.0)
    total = tl.sum(acc, 0)
    # Sorted ids: any id outside [-1, num_seqs) sits at one end. Such rows belong to no output,
    # so rather than drop them silently every output becomes NaN.
    lowest = tl.load(sorted_ids_ptr)
    highest = tl.load(sorted_ids_ptr + N - 1)
    bad = (lowest < -1) | (highest >= num_seqs)
    tl.store(out_ptr + seq, tl.where(bad, float("nan"), total))


@triton.jit
def _sequence_logps_bwd_kernel(
    logits_ptr, grad_ptr, labels_ptr, weights_ptr, seq_ids_ptr, lse_ptr, rest_ptr, grad_out_ptr,
    V, T, num_seqs, ignore_index, stride_grad_out,
    stride_b, stride_t, stride_v,
    gstride_b, gstride_t, gstride_v,
    BLOCK_V: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr, BF16_RTNE_BY_HAND: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label, seq, w, active = _load_row(labels_ptr, seq_ids_ptr, weights_ptr, row, num_seqs, ignore_index, ACC)
    g = tl.load(grad_out_ptr + tl.where(active, seq, 0) * stride_grad_out, mask=active, other=0.0).to(ACC)
    coef = tl.where(active, g * w, 0.0)
    grad_row = grad_ptr + (row // T) * gstride_b + (row % T) * gstride_t
    cols = tl.arange(0, BLOCK_V)
    if coef == 0:
        zeros = tl.zeros([BLOCK_V], grad_ptr.dtype.element_ty)
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            tl.store(grad_row + _column_offsets(idx, gstride_v, WIDE), zeros, mask=idx < V)
    else:
        row_ptr = logits_ptr + (row // T) * stride_b + (row % T) * stride_t
        lse = tl.load(lse_ptr + row)
        # The true class gets coef * (1 - p_label) from the forward's sum over the other classes:
        # computing p_label - 1 here would cancel for peaked rows (p_label ~ 1).
        label_grad = coef * tl.load(rest_ptr + row)
        label32 = tl.where((label >= 0) & (label < V), label, -1).to(tl.int32)
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            inside = idx < V
            x = tl.load(row_ptr + _column_offsets(idx, stride_v, WIDE), mask=inside,
                        other=float("-inf")).to(ACC)
            grad = tl.where(idx == label32, label_grad, -coef * tl.exp(x - lse))
            _store_grad(grad_row + _column_offsets(idx, gstride_v, WIDE), grad, inside, BF16_RTNE_BY_HAND)


def _interpreted() -> bool:
    """True when TRITON_INTERPRET=1 was set before this module defined its kernels."""
    return isinstance(_sequence_logps_fwd_kernel, InterpretedFunction)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_config(vocab: int) -> tuple[int, int]:
    """Vocabulary block width and warp count.

    The interpreter pays per block iteration, so it takes the whole row at once. On a GPU a block of
    up to 32768 columns over 32 warps keeps 32 fp32 values per thread in registers (Liger-Kernel's
    choice for the same streaming softmax).
    """
    whole_row = max(16, triton.next_power_of_2(vocab))
    if _interpreted():
        return min(whole_row, 1 << 18), 1
    block = min(whole_row, 1 << 15)
    return block, max(4, min(32, block // 1024))


def _new_buffer(shape, dtype, device) -> torch.Tensor:
    """Every output and scratch buffer comes from here (tests poison it to prove full coverage)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _wide(vocab: int, *column_strides: int) -> bool:
    """Whether column offsets can reach 2**31 elements and must be computed in int64."""
    return max(abs(s) for s in column_strides) * vocab >= 2 ** 31


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _as_rows(logits: torch.Tensor) -> tuple[int, int, int, int]:
    """(T, stride_b, stride_t, stride_v) addressing rows of a (B, T, V) tensor as row = b * T + t."""
    _, t, _ = logits.shape
    return max(t, 1), logits.stride(0), logits.stride(1), logits.stride(2)


def _forward(logits, labels, weights, seq_ids, num_seqs, ignore_index):
    n = logits.shape[0] * logits.shape[1]
    vocab = logits.shape[2]
    device = logits.device
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    acc = _acc_dtype(logits.dtype)
    lse = _new_buffer((n,), out_dtype, device)
    rest = _new_buffer((n,), out_dtype, device)
    row_logps = _new_buffer((n,), out_dtype, device)
    out = _new_buffer((num_seqs,), out_dtype, device)
    if n == 0:
        return out.zero_(), lse, rest
    block_v, warps = _launch_config(vocab)
    t, sb, st, sv = _as_rows(logits)
    _sequence_logps_fwd_kernel[(n,)](
        logits, labels, weights, seq_ids, lse, rest, row_logps,
        vocab, t, num_seqs, ignore_index, sb, st, sv,
        BLOCK_V=block_v, ACC=acc, WIDE=_wide(vocab, sv), num_warps=warps,
    )
    if num_seqs == 0:
        return out, lse, rest
    # Stable sort + searchsorted give each sequence its rows in ascending order without a host sync.
    sorted_ids, order = torch.sort(seq_ids.to(torch.int64), stable=True)
    bounds = torch.searchsorted(sorted_ids, torch.arange(num_seqs + 1, device=device))
    _segment_sum_kernel[(num_seqs,)](
        row_logps, order, sorted_ids, bounds, out, n, num_seqs,
        BLOCK=1024, ACC=acc, num_warps=4,
    )
    return out, lse, rest


def _backward(grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, inplace):
    grad = logits if inplace else _new_buffer(logits.shape, logits.dtype, logits.device)
    n = logits.shape[0] * logits.shape[1]
    if n == 0:
        return grad
    vocab = logits.shape[2]
    block_v, warps = _launch_config(vocab)
    t, sb, st, sv = _as_rows(logits)
    _, gsb, gst, gsv = _as_rows(grad)
    _sequence_logps_bwd_kernel[(n,)](
        logits, grad, labels, weights, seq_ids, lse, rest, grad_out,
        vocab, t, num_seqs, ignore_index, grad_out.stride(0) if num_seqs else 0,
        sb, st, sv, gsb, gst, gsv,
        BLOCK_V=block_v, ACC=_acc_dtype(logits.dtype), WIDE=_wide(vocab, sv, gsv), num_warps=warps,
        BF16_RTNE_BY_HAND=logits.dtype == torch.bfloat16 and _interpreted(),
    )
    return grad


class SequenceLogpsFunction(torch.autograd.Function):
    """Autograd wrapper over the Triton kernels; logits are a (B, T, V) view, the rest flat (B*T,)."""

    @staticmethod
    def forward(ctx, logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward):
        with _on_device(logits.device):
            out, lse, rest = _forward(logits, labels, weights, seq_ids, num_seqs, ignore_index)
        ctx.save_for_backward(logits, labels, weights, seq_ids, lse, rest)
        ctx.num_seqs = num_seqs
        ctx.ignore_index = ignore_index
        ctx.inplace_backward = inplace_backward
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, labels, weights, seq_ids, lse, rest = ctx.saved_tensors
        with _on_device(logits.device):
            grad = _backward(grad_out, logits, labels, weights, seq_ids, lse, rest,
                             ctx.num_seqs, ctx.ignore_index, ctx.inplace_backward)
        if ctx.inplace_backward:
            # The logits now hold the gradient: anything else that saved them must fail loudly
            # when it unpacks them, not compute with the gradient.
            torch.autograd.graph.increment_version(logits)
        return grad, None, None, None, None, None, None


def _uses_triton(device: torch.device) -> bool:
    return device.type == "cuda" or _interpreted()


def _run(api, logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward, check_values):
    """Check, then run (B, T, V) logits with flat (B*T,) row data on the kernel or the reference."""
    b, t, vocab = logits.shape
    check_inputs(api, b * t, vocab, logits.device, labels, weights, seq_ids, num_seqs, ignore_index,
                 check_values)
    if not _uses_triton(logits.device):
        return reference.sequence_logps(logits.reshape(b * t, vocab), labels, weights, seq_ids, num_seqs,
                                        ignore_index=ignore_index, inplace_backward=inplace_backward,
                                        check_values=False)
    return SequenceLogpsFunction.apply(logits, labels.contiguous(), weights.contiguous(),
                                       seq_ids.contiguous(), num_seqs, ignore_index, inplace_backward)


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
    vocab_group=None,
) -> torch.Tensor:
    """Per-sequence sums of weighted label log-probs, differentiable with respect to `logits`.

    Args:
        logits: (N, V) bfloat16, float16, float32 or float64; rows may be strided. Row i predicts
            labels[i] (shift before calling).
        labels: (N,) integer in [0, V), or `ignore_index` (the row contributes nothing).
        weights: (N,) floating: 0/1 sentence masks or soft weights.
        seq_ids: (N,) integer in [0, num_seqs), or -1 (the row belongs to no sequence).
        num_seqs: number of output sequences.
        ignore_index: label value that marks a row as ignored.
        inplace_backward: write the gradient into the logits' storage (saves an N x V buffer; the
            logits must not be needed after the backward).
        check_values: read labels and seq_ids to range-check them. None (default) checks CPU tensors
            only, since on CUDA the check is a host synchronisation; unchecked bad values give NaN.
        vocab_group: a torch.distributed group over which the vocabulary is split: logits are this
            rank's contiguous shard (N, V_r), labels global ids; ranks exchange per-row statistics,
            never logits (maskdpo.kernels.vocab_parallel; PyTorch, not the Triton kernel).

    Returns:
        (num_seqs,) float32 (float64 for float64 logits):
        out[s] = sum_{i: seq_ids[i] = s} weights[i] * log_softmax(logits[i])[labels[i]].

    CUDA tensors run the Triton kernel; CPU tensors run it under TRITON_INTERPRET=1 and the
    PyTorch reference (`maskdpo.kernels.reference`) otherwise.
    """
    check_logits("sequence_logps", logits, ndim=2)
    check_inplace("sequence_logps", logits, inplace_backward)
    if vocab_group is not None:
        from .vocab_parallel import shard_offset, vocab_parallel_sequence_logps

        vocab = shard_offset(logits.shape[1], vocab_group, logits.device)[1]
        check_inputs("sequence_logps", logits.shape[0], vocab, logits.device, labels, weights, seq_ids, num_seqs,
                     ignore_index, check_values)
        return vocab_parallel_sequence_logps(logits, labels, weights, seq_ids, num_seqs, ignore_index=ignore_index,
                                             group=vocab_group)
    return _run("sequence_logps", logits.unsqueeze(0), labels, weights, seq_ids, num_seqs, ignore_index,
                inplace_backward, check_values)


def masked_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    inplace_backward: bool = False,
    check_values: bool | None = None,
) -> torch.Tensor:
    """Padded-batch form: logits (B, T, V), labels and weights (B, T) -> (B,) weighted sums.

    logits[b, t] predicts labels[b, t] (already shifted). Strided views such as logits[:, :-1] are
    read in place by the kernel, without a copy of the logits. Other arguments as `sequence_logps`.
    """
    check_logits("masked_logps", logits, ndim=3)
    check_inplace("masked_logps", logits, inplace_backward)
    b, t, _ = logits.shape
    for name, tensor in (("labels", labels), ("weights", weights)):
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        if shape != (b, t):
            raise ValueError(f"masked_logps: {name} must have shape {(b, t)} to match logits, got {shape}")
    seq_ids = torch.arange(b, device=logits.device).repeat_interleave(t)
    return _run("masked_logps", logits, labels.reshape(-1), weights.reshape(-1), seq_ids, b, ignore_index,
                inplace_backward, check_values)
