"""The learning-rate schedule: linear warmup, then cosine to 0 or constant.

Warmup: w = int(warmup_ratio x total) steps; step s (0-based) runs at (s + 1) / (w + 1) of the peak,
so the first step trains at 1/(w + 1) (not at 0, as transformers' linear warmup's first step does)
and step w is the first at the peak."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_ratio: float, schedule: str = "cosine") -> float:
    """The multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    warmup = int(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def lr_scheduler_factory(total_steps: int, warmup_ratio: float, schedule: str):
    """A factory of LambdaLR schedulers for the engine (which builds the optimizer)."""
    import torch

    def make(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup_ratio, schedule))
    return make
