"""Fused per-sequence weighted log-probs: log-softmax, label gather and weighted sum in one pass.

For rows i of logits (N, V) with labels y_i, weights w_i and sequence ids s_i this computes

    out[s] = sum_{i: s_i = s} w_i * log_softmax(logits_i)[y_i]

and its gradient g[s_i] * w_i * (onehot(y_i) - softmax(logits_i)) with respect to the logits.

Layout of the work (one Triton program per row, the vocabulary streamed in blocks; block shape from
a launch variant, kernels/launch.py):
- forward: one pass. Each thread keeps, for its own columns, a running max and the sum of exp(x - max)
  over every class but the label, at one exponential per element; the row is reduced across the
  block once, at its end, and the label logit (one scalar load) joins it there, so
  1 - p(label) = (the others' sum) / (the whole sum) exactly. Saves per row the fp32 log-sum-exp,
  1 - p(label), and the row's weighted log-prob. The per-sequence sums are then taken by a second,
  tiny kernel over the N row values in a fixed order (rows sorted stably by sequence id), so results
  are bitwise deterministic: no float atomics anywhere.
- rows that contribute nothing (ignored label, seq id -1, weight 0: prompt tokens and masked
  sentences) are never read: the forward skips them and the backward only writes their zeros.
- backward: one pass, one vectorised store per element. The true-class gradient is
  coef * (1 - p_y) from the forward, instead of coef * (p_y - 1): for peaked rows (p_y close to 1)
  that subtraction would cancel and lose the gradient.
- with unit column stride each row's loop starts on a 16-byte boundary (a few columns before the
  row, masked by value; stores stop exactly at the row's ends), so loads and stores are 16-byte
  vectors whatever V is.
- exponentials are the GPU's flush-to-zero ex2 (fp32): a term below 2**-126 beside a term of 1.
- `inplace_backward=True` writes the gradient over the logits' own storage (each element is read
  before it is overwritten, by the same thread), saving an N x V allocation.
- the launchers are wrapped as torch.library custom ops with fake implementations (torch.compile
  and FakeTensorMode see one node); CPU tensors outside the interpreter run the PyTorch reference
  behind the same ops.

Invalid values on CUDA (where checking them would need a host sync) are never silently dropped: a
row with a label outside [0, V) gives NaN for its sequence, and a sequence id outside [-1, num_seqs)
makes every output NaN. Pass `check_values=True` to get a ValueError instead.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import reference
from .checks import check_inplace, check_inputs, check_logits
from .launch import VARIANTS, check_variant, launch, resolve  # noqa: F401 - VARIANTS: named here for callers
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


LOG2E = tl.constexpr(1.4426950408889634)
FLOOR = tl.constexpr(1.0e38)  # the running max's start: below any logit that matters; (x - m) * log2(e) stays finite


@triton.jit
def _exp(x, FTZ: tl.constexpr):
    """exp(x). FTZ 1 (GPU, fp32): the native ex2.approx.ftz, whose results below 2**-126 flush to 0,
    which no sum holding a term of 1 can see; FTZ 2 (the interpreter) computes that same flush with
    tl.exp2; FTZ 0: tl.exp (fp64 accumulation)."""
    if FTZ == 1:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * LOG2E], dtype=tl.float32,
                                         is_pure=True, pack=1)
    elif FTZ == 2:
        e = tl.exp2(x * LOG2E)
        return tl.where(e < 1.1754943508222875e-38, 0.0, e)
    else:
        return tl.exp(x)


@triton.jit
def _row_start(row, T, stride_b, stride_t, ALIGN: tl.constexpr):
    """(element offset of the row's aligned start, columns before the row in the first block).

    With unit column stride the loop starts `lead` columns before the row, on an ALIGN-element (16
    byte) boundary, so every block is loaded in 16-byte vectors whatever V is; the extra columns lie
    in the same 16-byte sectors as the row's own and are masked out by value, never used."""
    offset = (row // T) * stride_b + (row % T) * stride_t
    if ALIGN > 1:
        lead = offset % ALIGN
        return tl.multiple_of(offset - lead, ALIGN), lead
    else:
        return offset, offset * 0


@triton.jit
def _sequence_logps_fwd_kernel(
    logits_ptr, labels_ptr, weights_ptr, seq_ids_ptr,
    lse_ptr, rest_ptr, row_logps_ptr,
    V, T, num_seqs, ignore_index,
    stride_b, stride_t, stride_v,
    BLOCK_V: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr, ALIGN: tl.constexpr, FTZ: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label, seq, w, active = _load_row(labels_ptr, seq_ids_ptr, weights_ptr, row, num_seqs, ignore_index, ACC)
    lse = tl.zeros([], ACC)
    rest = tl.zeros([], ACC)
    row_logp = tl.zeros([], ACC)
    if active:
        # Logits are addressed as a (B, T, V) view so that slices such as logits[:, :-1] need no copy.
        start_offset, lead = _row_start(row, T, stride_b, stride_t, ALIGN)
        row_ptr = logits_ptr + start_offset
        in_range = (label >= 0) & (label < V)
        label_col = tl.where(in_range, label, -1).to(tl.int32) + lead.to(tl.int32)
        end = tl.multiple_of((lead + V + ALIGN - 1) // ALIGN * ALIGN, ALIGN)
        cols = tl.arange(0, BLOCK_V)
        # Per thread, for its own columns: the running max and the sum of exp(x - max) over every
        # class but the label (1 - p_label = that sum / the whole sum, exactly: no cancellation for
        # peaked rows). Each element costs one exponential: with d = x - m, exp(-|d|) is either the
        # new term (x <= m) or the rescaling of the old sum (x > m, whose own term is 1).
        # The running max starts finite (-FLOOR) so that a -inf logit, or a column outside the row
        # (set to -inf), gives x - m = -inf and a term of 0, never -inf - -inf.
        m = tl.full([BLOCK_V], -FLOOR, ACC)
        s = tl.zeros([BLOCK_V], ACC)
        for first in range(0, end, BLOCK_V):
            pos = first + cols
            x = tl.load(row_ptr + _column_offsets(pos, stride_v, WIDE), mask=pos < end).to(ACC)
            x = tl.where((pos >= lead) & (pos < lead + V) & (pos != label_col), x, float("-inf"))
            e = _exp(-tl.abs(x - m), FTZ)
            s = tl.where(x > m, s * e + 1.0, s + e)
            m = tl.maximum(m, x)
        # One reduction of the row across the block, at its end.
        shift_other = tl.max(m, 0)
        s_other = tl.sum(s * _exp(m - shift_other, FTZ), 0)
        x_label = tl.load(logits_ptr + start_offset + (tl.where(in_range, label, 0) + lead) * stride_v).to(ACC)
        shift = tl.maximum(shift_other, x_label)
        others = s_other * tl.exp(shift_other - shift)
        total = others + tl.exp(x_label - shift)
        lse = shift + tl.log(total)
        rest = others / total
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
    BLOCK_V: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr, ALIGN: tl.constexpr, FTZ: tl.constexpr,
    BF16_RTNE_BY_HAND: tl.constexpr, INTERPRETED: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label, seq, w, active = _load_row(labels_ptr, seq_ids_ptr, weights_ptr, row, num_seqs, ignore_index, ACC)
    g = tl.load(grad_out_ptr + tl.where(active, seq, 0) * stride_grad_out, mask=active, other=0.0).to(ACC)
    coef = tl.where(active, g * w, 0.0)
    # The launcher gives ALIGN > 1 only when the gradient's rows sit at the same offsets mod ALIGN
    # as the logits' (the same lead), with unit column strides.
    grad_offset, lead = _row_start(row, T, gstride_b, gstride_t, ALIGN)
    grad_row = grad_ptr + grad_offset
    end = tl.multiple_of((lead + V + ALIGN - 1) // ALIGN * ALIGN, ALIGN)
    cols = tl.arange(0, BLOCK_V)
    if coef == 0:
        zeros = tl.zeros([BLOCK_V], grad_ptr.dtype.element_ty)
        for first in range(0, end, BLOCK_V):
            pos = first + cols
            ptrs = grad_row + _column_offsets(pos, gstride_v, WIDE)
            # Stores must stop exactly at the row's ends; only the first and last blocks reach them, so
            # the blocks between store unmasked (16-byte vectors).
            if (first == 0) | (first + BLOCK_V > lead + V):
                tl.store(ptrs, zeros, mask=(pos >= lead) & (pos < lead + V))
            else:
                tl.store(ptrs, zeros)
    else:
        logits_offset, _ = _row_start(row, T, stride_b, stride_t, ALIGN)
        row_ptr = logits_ptr + logits_offset
        lse = tl.load(lse_ptr + row)
        # The true class gets coef * (1 - p_label) from the forward's sum over the other classes:
        # computing p_label - 1 here would cancel for peaked rows (p_label ~ 1).
        label_grad = coef * tl.load(rest_ptr + row)
        label_col = tl.where((label >= 0) & (label < V), label, -1).to(tl.int32) + lead.to(tl.int32)
        for first in range(0, end, BLOCK_V):
            pos = first + cols
            x = tl.load(row_ptr + _column_offsets(pos, stride_v, WIDE), mask=pos < end).to(ACC)
            if INTERPRETED:  # numpy warns on whatever lies beside the row; a GPU just drops those lanes
                x = tl.where((pos >= lead) & (pos < lead + V), x, 0.0)
            grad = tl.where(pos == label_col, label_grad, -coef * _exp(x - lse, FTZ))
            ptrs = grad_row + _column_offsets(pos, gstride_v, WIDE)
            if (first == 0) | (first + BLOCK_V > lead + V):
                _store_grad(ptrs, grad, (pos >= lead) & (pos < lead + V), BF16_RTNE_BY_HAND)
            else:
                _store_grad(ptrs, grad, None, BF16_RTNE_BY_HAND)


def _interpreted() -> bool:
    """True when TRITON_INTERPRET=1 was set before this module defined its kernels."""
    return isinstance(_sequence_logps_fwd_kernel, InterpretedFunction)


def _uses_triton(device: torch.device) -> bool:
    return device.type == "cuda" or _interpreted()


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _ftz(dtype: torch.dtype) -> int:
    """The exponential `_exp` uses: native flush-to-zero ex2 on a GPU in fp32, its emulation under
    the interpreter, the exact tl.exp for fp64."""
    if dtype == torch.float64:
        return 0
    return 2 if _interpreted() else 1


def _align(*tensors_and_strides) -> int:
    """Elements per 16-byte vector when every row can be loaded and stored in them, else 1.

    Needs unit column strides, 16-byte aligned base pointers and, for two tensors, row offsets that
    agree mod the vector (then one `lead` serves both). Arguments: (tensor, (stride_b, stride_t,
    stride_v)) pairs."""
    first_tensor, (sb0, st0, _) = tensors_and_strides[0]
    vector = 16 // first_tensor.element_size()
    for tensor, (sb, st, sv) in tensors_and_strides:
        if sv != 1 or tensor.data_ptr() % 16 or (sb - sb0) % vector or (st - st0) % vector:
            return 1
    return vector


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


def triton_forward(logits, labels, weights, seq_ids, num_seqs, ignore_index, variant=None):
    """The forward launcher: (B, T, V) logits, flat row data -> (out, lse, 1 - p_label per row)."""
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
    shape = resolve(variant, vocab, device, _interpreted())
    t, sb, st, sv = _as_rows(logits)
    launch(_sequence_logps_fwd_kernel, (n,),
           logits, labels, weights, seq_ids, lse, rest, row_logps,
           vocab, t, num_seqs, ignore_index, sb, st, sv,
           BLOCK_V=shape.block_v, ACC=acc, WIDE=_wide(vocab, sv), ALIGN=_align((logits, (sb, st, sv))),
           FTZ=_ftz(logits.dtype), num_warps=shape.num_warps)
    _segment_sum_into(out, row_logps, seq_ids, num_seqs)
    return out, lse, rest


def _segment_sum_into(out, row_values, seq_ids, num_seqs) -> None:
    if num_seqs == 0:
        return
    # Stable sort + searchsorted give each sequence its rows in ascending order without a host sync.
    sorted_ids, order = torch.sort(seq_ids.to(torch.int64), stable=True)
    bounds = torch.searchsorted(sorted_ids, torch.arange(num_seqs + 1, device=row_values.device))
    launch(_segment_sum_kernel, (num_seqs,),
           row_values, order, sorted_ids, bounds, out, row_values.numel(), num_seqs,
           BLOCK=1024, ACC=_acc_dtype(row_values.dtype), num_warps=4)


def segment_sum(row_values: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """out[s] = the sum of row_values[i] over the rows with seq_ids[i] == s, each sequence's rows in
    ascending order: no float atomics, bitwise the same from run to run, and no host read. Rows with
    id -1 belong to no sequence; an id outside [-1, num_seqs) makes every output NaN (as the
    kernel's forward). The Triton segment sum on CUDA and under the interpreter, else the reference."""
    if not _uses_triton(row_values.device):
        return reference.segment_sum(row_values, seq_ids, num_seqs)
    out = _new_buffer((num_seqs,), row_values.dtype, row_values.device)
    if row_values.numel() == 0:
        return out.zero_()
    with _on_device(row_values.device):
        _segment_sum_into(out, row_values.contiguous(), seq_ids.contiguous(), num_seqs)
    return out


def triton_backward(grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, grad,
                    variant=None):
    """The backward launcher: writes the logits' gradient into `grad` (the logits themselves when in
    place) and returns it."""
    n = logits.shape[0] * logits.shape[1]
    if n == 0:
        return grad
    vocab = logits.shape[2]
    shape = resolve(variant, vocab, logits.device, _interpreted())
    t, sb, st, sv = _as_rows(logits)
    _, gsb, gst, gsv = _as_rows(grad)
    launch(_sequence_logps_bwd_kernel, (n,),
           logits, grad, labels, weights, seq_ids, lse, rest, grad_out,
           vocab, t, num_seqs, ignore_index, grad_out.stride(0) if num_seqs else 0,
           sb, st, sv, gsb, gst, gsv,
           BLOCK_V=shape.block_v, ACC=_acc_dtype(logits.dtype), WIDE=_wide(vocab, sv, gsv),
           ALIGN=_align((grad, (gsb, gst, gsv)), (logits, (sb, st, sv))), FTZ=_ftz(logits.dtype),
           BF16_RTNE_BY_HAND=logits.dtype == torch.bfloat16 and _interpreted(), INTERPRETED=_interpreted(),
           num_warps=shape.num_warps)
    return grad


# ---- custom ops: what torch.compile and FakeTensorMode see (one node each, with fake shapes) ----

@torch.library.custom_op("maskdpo::sequence_logps_fwd", mutates_args=())
def _forward_op(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, seq_ids: torch.Tensor,
                num_seqs: int, ignore_index: int, inplace_backward: bool, variant: str | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, V) logits -> (per-sequence sums, lse per row, 1 - p_label per row). inplace_backward is
    only read by the backward."""
    return forward(logits, labels, weights, seq_ids, num_seqs, ignore_index, variant)


@_forward_op.register_fake
def _(logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward, variant):
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    n = logits.shape[0] * logits.shape[1]
    return logits.new_empty((num_seqs,), dtype=acc), logits.new_empty((n,), dtype=acc), logits.new_empty((n,), dtype=acc)


def forward(logits, labels, weights, seq_ids, num_seqs, ignore_index, variant=None):
    """(B, T, V) logits -> (per-sequence sums, lse per row, 1 - p_label per row), no autograd. CUDA
    tensors run the Triton kernels (so do CPU tensors under TRITON_INTERPRET=1), other CPU tensors
    the reference."""
    if not _uses_triton(logits.device):
        b, t, vocab = logits.shape
        return reference.forward(logits.reshape(b * t, vocab), labels, weights, seq_ids, num_seqs, ignore_index)
    with _on_device(logits.device):
        return triton_forward(logits, labels, weights, seq_ids, num_seqs, ignore_index, variant)


def backward_into(grad, grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, variant=None):
    """The (B, T, V) logits' gradient written into `grad` (the logits themselves for in place), from
    the forward's lse and 1 - p_label; returns it. Dispatches as `forward`."""
    if not _uses_triton(logits.device):
        b, t, vocab = logits.shape
        try:
            rows = grad.view(b * t, vocab)  # written in place, whatever its strides
        except RuntimeError:  # (B, T, V) strides that no flat view has: compute aside, then copy
            rows = None
        target = rows if rows is not None else torch.empty(b * t, vocab, dtype=grad.dtype, device=grad.device)
        reference.backward_into(target, grad_out, logits.reshape(b * t, vocab), labels, weights, seq_ids, lse, rest,
                                num_seqs, ignore_index)
        if rows is None:
            grad.copy_(target.view(b, t, vocab))
        return grad
    with _on_device(logits.device):
        return triton_backward(grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, grad,
                               variant)


@torch.library.custom_op("maskdpo::sequence_logps_bwd", mutates_args=())
def _backward_op(grad_out: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                 seq_ids: torch.Tensor, lse: torch.Tensor, rest: torch.Tensor, num_seqs: int, ignore_index: int,
                 variant: str | None) -> torch.Tensor:
    """The logits' gradient in a new (B, T, V) buffer of their dtype."""
    grad = _new_buffer(logits.shape, logits.dtype, logits.device)
    return backward_into(grad, grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index,
                          variant)


@_backward_op.register_fake
def _(grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, variant):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.custom_op("maskdpo::sequence_logps_bwd_", mutates_args=("logits",))
def _backward_inplace_op(grad_out: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                         seq_ids: torch.Tensor, lse: torch.Tensor, rest: torch.Tensor, num_seqs: int,
                         ignore_index: int, variant: str | None) -> None:
    """The logits' gradient written over the logits (each element is read before it is overwritten,
    by the same thread)."""
    backward_into(logits, grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, variant)


@_backward_inplace_op.register_fake
def _(grad_out, logits, labels, weights, seq_ids, lse, rest, num_seqs, ignore_index, variant):
    return None


def _setup_context(ctx, inputs, output):
    logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward, variant = inputs
    _, lse, rest = output
    ctx.save_for_backward(logits, labels, weights, seq_ids, lse, rest)
    ctx.num_seqs, ctx.ignore_index, ctx.inplace_backward, ctx.variant = num_seqs, ignore_index, inplace_backward, variant


def _backward(ctx, grad_out, _grad_lse, _grad_rest):
    logits, labels, weights, seq_ids, lse, rest = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    if ctx.inplace_backward:
        # The op declares that it mutates the logits: their version moves on, so anything else that
        # saved them fails loudly when it unpacks them instead of computing with the gradient.
        torch.ops.maskdpo.sequence_logps_bwd_(grad_out, logits, labels, weights, seq_ids, lse, rest, ctx.num_seqs,
                                              ctx.ignore_index, ctx.variant)
        grad = logits
    else:
        grad = torch.ops.maskdpo.sequence_logps_bwd(grad_out, logits, labels, weights, seq_ids, lse, rest, ctx.num_seqs,
                                                    ctx.ignore_index, ctx.variant)
    return grad, None, None, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _run(api, logits, labels, weights, seq_ids, num_seqs, ignore_index, inplace_backward, check_values, variant):
    """Check, then run (B, T, V) logits with flat (B*T,) row data through the custom op."""
    b, t, vocab = logits.shape
    check_inputs(api, b * t, vocab, logits.device, labels, weights, seq_ids, num_seqs, ignore_index,
                 check_values)
    check_variant(api, variant)
    # Through torch.ops, looked up at each call (see linear_sequence_logps for why).
    out, _, _ = torch.ops.maskdpo.sequence_logps_fwd(logits, labels.contiguous(), weights.contiguous(),
                                                     seq_ids.contiguous(), num_seqs, ignore_index, inplace_backward,
                                                     variant)
    return out


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
    variant: str | None = None,
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
        variant: a launch variant of the Triton kernels (maskdpo.kernels.launch.VARIANTS), e.g. to
            benchmark them; None: the default for the device's architecture.

    Returns:
        (num_seqs,) float32 (float64 for float64 logits):
        out[s] = sum_{i: seq_ids[i] = s} weights[i] * log_softmax(logits[i])[labels[i]].

    CUDA tensors run the Triton kernel; CPU tensors run it under TRITON_INTERPRET=1 and the
    PyTorch reference (`maskdpo.kernels.reference`) otherwise.
    """
    check_logits("sequence_logps", logits, ndim=2)
    check_inplace("sequence_logps", logits, inplace_backward)
    return _run("sequence_logps", logits.unsqueeze(0), labels, weights, seq_ids, num_seqs, ignore_index,
                inplace_backward, check_values, variant)


def masked_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    inplace_backward: bool = False,
    check_values: bool | None = None,
    variant: str | None = None,
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
                inplace_backward, check_values, variant)
