"""Argument checks shared by the Triton path and the PyTorch reference.

Shape, dtype and device checks read only metadata and run on every call. Value checks (labels in
range, sequence ids in range) must read the tensors; on a GPU that is a host synchronisation, so they
run by default only for CPU tensors, where they cost no device sync, and on CUDA when asked for.
"""

from __future__ import annotations

import torch

LOGITS_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _fail(api: str, message: str) -> None:
    raise ValueError(f"{api}: {message}")


def _check_vector(api: str, name: str, tensor, shape, device, integer: bool) -> None:
    if not isinstance(tensor, torch.Tensor):
        _fail(api, f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        _fail(api, f"{name} must have shape {tuple(shape)} to match logits, got {tuple(tensor.shape)}")
    if tensor.device != device:
        _fail(api, f"{name} is on {tensor.device} but logits are on {device}")
    if integer and (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool):
        _fail(api, f"{name} must be an integer tensor, got {tensor.dtype}")
    if not integer and not tensor.dtype.is_floating_point:
        _fail(api, f"{name} must be a floating-point tensor, got {tensor.dtype}")


def check_logits(api: str, logits, ndim: int) -> None:
    """Logits must be a floating tensor of `ndim` dimensions with a non-empty vocabulary."""
    if not isinstance(logits, torch.Tensor):
        _fail(api, f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != ndim:
        _fail(api, f"logits must have {ndim} dimensions, got shape {tuple(logits.shape)}")
    if logits.dtype not in LOGITS_DTYPES:
        _fail(api, f"logits must be bfloat16, float16, float32 or float64, got {logits.dtype}")
    if logits.shape[-1] == 0:
        _fail(api, "logits have an empty vocabulary dimension (V = 0)")


def should_check_values(check_values: bool | None, device: torch.device) -> bool:
    """check_values as the APIs take it: True, False, or None for "only on the CPU" (where reading a
    tensor costs no device synchronisation) and not while torch.compile traces (a host read there
    would break the graph at the kernel)."""
    if check_values is None:
        return device.type == "cpu" and not torch.compiler.is_compiling()
    return check_values


def check_inputs(
    api: str,
    rows: int,
    vocab: int,
    device: torch.device,
    labels,
    weights,
    seq_ids,
    num_seqs,
    ignore_index,
    check_values: bool | None,
) -> None:
    """Validate the per-row arguments for `rows` rows of `vocab` logits on `device`.

    Raises ValueError naming the argument at fault.

    check_values: True reads the tensors (a device sync on CUDA), False never does, None does so
    only for CPU tensors.
    """
    n, v = rows, vocab
    if isinstance(num_seqs, bool) or not isinstance(num_seqs, int) or num_seqs < 0:
        _fail(api, f"num_seqs must be a non-negative int, got {num_seqs!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        _fail(api, f"ignore_index must be an int, got {ignore_index!r}")
    _check_vector(api, "labels", labels, (n,), device, integer=True)
    _check_vector(api, "weights", weights, (n,), device, integer=False)
    _check_vector(api, "seq_ids", seq_ids, (n,), device, integer=True)
    if weights.requires_grad:
        _fail(api, "weights require grad, but they are data (sentence masks): pass weights.detach()")
    if not should_check_values(check_values, device) or n == 0:
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        _fail(api, f"labels[{i}] = {int(labels[i])} is outside [0, {v}) and is not ignore_index ({ignore_index})")
    bad = (seq_ids < -1) | (seq_ids >= num_seqs)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        _fail(api, f"seq_ids[{i}] = {int(seq_ids[i])} is outside [-1, num_seqs={num_seqs})")


def check_inplace(api: str, logits: torch.Tensor, inplace_backward: bool) -> None:
    """inplace_backward overwrites the logits; a leaf's storage would then be its own gradient."""
    if inplace_backward and logits.is_leaf and logits.requires_grad:
        _fail(api, "inplace_backward=True needs logits produced by an op (such as the LM head), not a "
                   "leaf tensor that requires grad: its gradient would overwrite its own values")
