"""Causal attention over packed sequences (cu_seqlens), with interchangeable backends.

Backends, chosen automatically in this order, or named explicitly:
  flash_attn    flash-attn's varlen kernel (CUDA, when the flash-attn package is installed)
  torch_varlen  torch's own FlashAttention for packed sequences (CUDA; a torch whose varlen_attn
                takes scale, window_size and enable_gqa, e.g. 2.13; older ones are skipped, with
                the reason logged once)
  sdpa          a loop over sequences with torch's scaled_dot_product_attention (any device; the
                CPU path). It reads cu_seqlens on the host, so on CUDA it synchronises.
Every backend computes the same thing: each sequence attends causally to itself only.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging

import torch
import torch.nn.functional as F

BACKENDS = ("flash_attn", "torch_varlen", "sdpa")
# The keyword arguments packed_causal_attention passes to torch's varlen_attn.
VARLEN_ARGUMENTS = ("scale", "window_size", "enable_gqa")

logger = logging.getLogger(__name__)


def _importable(module: str) -> bool:
    """Whether `module` imports (an installed flash-attn whose CUDA extension fails to load does not)."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any failure means the backend cannot run here
        return False
    return True


def varlen_unsupported(varlen_attn, torch_version: str) -> str | None:
    """Why torch's `varlen_attn` cannot take the call packed_causal_attention makes (seven positional
    arguments and the VARLEN_ARGUMENTS keywords, which came in over several releases: 2.9-2.11 lack
    some), or None when it can."""
    prefix = f"torch_varlen skipped: torch {torch_version}'s varlen_attn"
    try:
        signature = inspect.signature(varlen_attn)
    except (TypeError, ValueError):
        return f"{prefix} has no signature to check"
    parameters = signature.parameters
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [] if takes_any_keyword else [name for name in VARLEN_ARGUMENTS if name not in parameters]
    if missing:
        return f"{prefix} has no {' or '.join(repr(name) for name in missing)} argument"
    try:
        signature.bind(*range(7), **dict.fromkeys(VARLEN_ARGUMENTS))
    except TypeError as error:
        return f"{prefix} does not take our call: {error}"
    return None


@functools.cache  # one log line per varlen_attn, however often the backends are listed
def varlen_usable(varlen_attn, torch_version: str) -> bool:
    """Whether `varlen_attn` takes our call; the reason it does not is logged (once)."""
    reason = varlen_unsupported(varlen_attn, torch_version)
    if reason:
        logger.warning(reason)
    return reason is None


def _torch_varlen_usable() -> bool:
    if not _importable("torch.nn.attention.varlen"):
        return False
    from torch.nn.attention.varlen import varlen_attn

    return varlen_usable(varlen_attn, torch.__version__)


def available_backends(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Backends that can run on `device` with `dtype`, best first (the flash kernels take fp16/bf16)."""
    out = []
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if _importable("flash_attn"):
            out.append("flash_attn")
        if _torch_varlen_usable():
            out.append("torch_varlen")
    out.append("sdpa")
    return out


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """'auto' -> the best available backend; a named one must be available, or a ValueError says why."""
    available = available_backends(device, dtype)
    if name == "auto":
        return available[0]
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of auto, {', '.join(BACKENDS)}; got {name!r}")
    if name not in available:
        raise ValueError(f"attention backend {name!r} cannot run on {device.type} with {dtype} here; "
                         f"available: {', '.join(available)}")
    return name


def packed_causal_attention(q, k, v, cu_seqlens, max_seqlen: int, backend: str, scale: float,
                            deterministic: bool = False):
    """q (T, Hq, D), k and v (T, Hkv, D); cu_seqlens (S + 1,) int32 boundaries -> (T, Hq, D).
    deterministic: flash-attn's deterministic backward (the other backends: torch's own choice)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(BACKENDS)} (resolve 'auto' first); got {backend!r}")
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                      softmax_scale=scale, causal=True, deterministic=deterministic)
    if backend == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale,
                           window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            # (H, L, D) per sequence; enable_gqa lets Hq be a multiple of Hkv.
            out[start:end] = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1),
                is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
            ).transpose(0, 1)
    return out
