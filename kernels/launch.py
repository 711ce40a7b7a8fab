"""How the Triton kernels are launched: launch variants, the per-architecture default, and a
compile-only mode.

A variant is a block width over the vocabulary and a warp count. Each thread keeps its own running
max and sums for BLOCK_V / (32 * num_warps) columns and the row is reduced across the block once, at
its end, so a variant trades registers per thread against threads per block. Every variant here
compiles without spilling and fits at least 2 blocks per SM on sm_80 and sm_90 (the compile lane,
tests/test_gpu_compile.py, asserts it and writes the resource table). The default per architecture
comes from that table until a GPU has measured them (benchmarks/gpu_check.py); `variant=` on the
public functions picks another, e.g. to benchmark them all.

`compile_only()` makes every launch compile its kernel for the active Triton target and return
without running it. With a stub driver that reports a GPU target, a CPU-only machine compiles the
kernels exactly as the launchers would launch them (benchmarks/compile_table.py).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Variant:
    block_v: int
    """Vocabulary columns each block iteration loads (a power of two)."""
    num_warps: int
    """Warps per row's program (32 threads each)."""


VARIANTS = {
    "b1024w4": Variant(1024, 4),
    "b2048w4": Variant(2048, 4),
    "b2048w8": Variant(2048, 8),
    "b4096w8": Variant(4096, 8),
    "b4096w16": Variant(4096, 16),
}

# By compute capability (major * 10 + minor): the highest key not above a device's capability
# applies. Chosen from the compile table (benchmarks/results/2026-12-02-aot-sm80-sm90/compile-table.md):
# 16 columns per thread (two 16-byte loads in bf16) at 5-7 blocks per SM, no spills; to be settled by
# measurement (benchmarks/gpu_check.py) on the first GPU.
DEFAULTS = {80: "b2048w4", 90: "b2048w4"}

# Under the interpreter each block iteration costs Python time: without an explicit variant a row is
# taken in one block (capped), one warp.
INTERPRETER_MAX_BLOCK = 1 << 18


def default_variant(capability: tuple[int, int]) -> str:
    """The default variant's name for a device of compute capability (major, minor)."""
    cc = capability[0] * 10 + capability[1]
    fitting = [key for key in DEFAULTS if key <= cc]
    return DEFAULTS[max(fitting) if fitting else min(DEFAULTS)]


def check_variant(api: str, variant) -> None:
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"{api}: variant must be None or one of {', '.join(VARIANTS)}; got {variant!r}")


def resolve(variant: str | None, vocab: int, device: torch.device, interpreted: bool) -> Variant:
    """The launch shape for a row of `vocab` columns: the named variant, else the device's default."""
    if variant is not None:
        return VARIANTS[variant]
    if interpreted:
        import triton

        return Variant(min(max(16, triton.next_power_of_2(vocab)), INTERPRETER_MAX_BLOCK), 1)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)
    return VARIANTS[default_variant(capability)]


@dataclass
class Compiled:
    """One kernel compiled by a launch under compile_only()."""
    name: str
    constants: dict
    kernel: object
    """triton's CompiledKernel: .asm holds ttir, ttgir, llir, ptx and cubin."""


_COMPILE_ONLY: contextvars.ContextVar[list | None] = contextvars.ContextVar("maskdpo_compile_only", default=None)


@contextlib.contextmanager
def compile_only():
    """Within this block launches compile and do not run; yields the list of what they compiled."""
    sink: list[Compiled] = []
    token = _COMPILE_ONLY.set(sink)
    try:
        yield sink
    finally:
        _COMPILE_ONLY.reset(token)


def launch(kernel, grid, *args, **meta) -> None:
    """kernel[grid](*args, **meta), or under compile_only() its compilation alone."""
    sink = _COMPILE_ONLY.get()
    if sink is None:
        kernel[grid](*args, **meta)
    else:
        sink.append(Compiled(kernel.fn.__name__, dict(meta), kernel.warmup(*args, grid=grid, **meta)))
