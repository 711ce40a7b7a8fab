"""Which micro-batches make each optimizer step, and which of them each data-parallel rank runs.

A step takes `micro_batches_per_step` (gradient accumulation x data parallel) micro-batches from a
reproducible shuffle of the epoch's micro-batches; data-parallel rank r runs every DP-th of them,
so the same list of micro-batches gives the same gradients whatever the layout. Micro-batches that
do not fill a last step of an epoch wait for a later epoch (a different set each epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data.packing import MicroBatch, empty_like


@dataclass(frozen=True)
class Step:
    epoch: int
    micro_batches: list[MicroBatch]

    @property
    def pairs(self) -> int:
        return sum(mb.num_pairs for mb in self.micro_batches)

    @property
    def tokens(self) -> int:
        return sum(mb.tokens for mb in self.micro_batches)


class StepLoader:
    def __init__(self, micro_batches: list[MicroBatch], micro_batches_per_step: int, seed: int):
        if micro_batches_per_step < 1:
            raise ValueError(f"micro_batches_per_step must be at least 1, got {micro_batches_per_step}")
        self.micro_batches, self.per_step, self.seed = micro_batches, micro_batches_per_step, seed
        self.steps_per_epoch = len(micro_batches) // micro_batches_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(micro_batches)} micro-batches cannot fill one step of {micro_batches_per_step}; "
                             "lower train.batch_pairs or data.token_budget")

    @property
    def left_out_per_epoch(self) -> int:
        return len(self.micro_batches) - self.steps_per_epoch * self.per_step

    def step(self, index: int) -> Step:
        """The micro-batches of step `index` (0-based)."""
        epoch, position = divmod(index, self.steps_per_epoch)
        order = list(range(len(self.micro_batches)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        chosen = order[position * self.per_step:(position + 1) * self.per_step]
        return Step(epoch, [self.micro_batches[i] for i in chosen])


def data_parallel_share(micro_batches: list[MicroBatch], data_parallel: int, rank: int) -> list[MicroBatch]:
    """Rank `rank`'s micro-batches: every DP-th, the list padded with empty micro-batches so that
    every rank runs the same schedule."""
    padded = micro_batches + [empty_like(micro_batches[0])] * (-len(micro_batches) % data_parallel)
    return padded[rank::data_parallel]
