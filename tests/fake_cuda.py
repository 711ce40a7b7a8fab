"""Fake CUDA on the CPU build of torch, for tracing the CUDA paths (tests/test_fake_cuda.py).

FakeTensorMode makes device="cuda" tensors (shapes, dtypes and devices, no values) and runs torch's
meta kernels and our custom ops' fake implementations on them. Two pieces of the CPU build still
want a real CUDA runtime, and are stood in for here:
- autograd records the current stream of every CUDA input: a device guard for CUDA is registered
  (c10's own FakeGuardImpl, which PyTorch ships for exactly this kind of testing; a tiny C++
  extension, built once per environment in TORCH_EXTENSIONS_DIR);
- the autograd engine refuses CUDA work without a CUDA runtime: `backward` walks the recorded graph
  itself and calls each node's own backward formula (the engine's work minus streams and threads).
"""

from __future__ import annotations

import functools

import torch

_GUARD = r"""
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>
#include <torch/extension.h>
C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::FakeGuardImpl<c10::DeviceType::CUDA>);
int registered() { return 1; }
"""


@functools.cache
def enable() -> None:
    """Register the stand-in CUDA device guard in this process (idempotent)."""
    from torch.utils.cpp_extension import load_inline

    load_inline("maskdpo_fake_cuda_guard", cpp_sources=[_GUARD], functions=["registered"]).registered()


def backward(loss: torch.Tensor) -> None:
    """loss.backward() for a graph of fake CUDA tensors: every node's backward in topological order,
    gradients summed per input slot, AccumulateGrad nodes filling the leaves' .grad."""
    order, seen = [], set()

    def visit(node):
        if node is None or node in seen:
            return
        seen.add(node)
        for child, _ in node.next_functions:
            visit(child)
        order.append(node)

    visit(loss.grad_fn)
    pending = {loss.grad_fn: [torch.ones_like(loss)]}
    for node in reversed(order):  # a node runs after every node that feeds it a gradient
        grads = pending.pop(node, None)
        if grads is None:  # nothing reached it (only unused outputs lead there)
            continue
        # C++ nodes are called; Python ones (autograd Functions, custom ops' formulas) applied.
        outputs = node(*grads) if callable(node) else node.apply(*grads)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for (child, slot), grad in zip(node.next_functions, outputs):
            if child is None or grad is None:
                continue
            meta = child._input_metadata[slot]
            # As the engine's validate_outputs: a broadcast input's gradient is summed back to its
            # shape, and cast to its dtype.
            if tuple(grad.shape) != tuple(meta.shape):
                grad = grad.sum_to_size(meta.shape)
            grad = grad.to(meta.dtype)
            slots = pending.setdefault(child, [None] * len(child._input_metadata))
            slots[slot] = grad if slots[slot] is None else slots[slot] + grad
