"""The micro-batch as the pipeline carries it: what stage 0 reads and what the last stage's loss reads.

Built once per micro-batch from a packed MicroBatch (maskdpo.data.packing) by `pipeline_tensors`.
DeepSpeed moves each tuple element to the device and hands the last stage a plain tuple, which
`LossInputs(*labels)` names again. The label side is read by the last stage only and never sent
between stages, so its tensors may vary in length (active_rows) and be floating point.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import layout
from .packing import MicroBatch


class StageInputs(NamedTuple):
    """What the first stage reads."""

    input_ids: torch.Tensor  # (budget,) int64
    position_ids: torch.Tensor  # (budget,) int64
    cu_seqlens: torch.Tensor  # int32 sequence boundaries (see MicroBatch)


class LossInputs(NamedTuple):
    """What the last stage's loss function reads (see MicroBatch for the packed fields)."""

    labels: torch.Tensor  # (budget,) int64, IGNORE_INDEX where a row predicts nothing
    weights: torch.Tensor  # (budget,) float32 sentence-mask weights
    seq_ids: torch.Tensor  # (budget,) int64 sequence id per row (layout), -1 for none
    active_rows: torch.Tensor  # (K,) int64 the rows that count
    pair_index: torch.Tensor  # (max_pairs,) int64 pair per slot, -1 for an empty slot
    kept: torch.Tensor  # (num_seqs,) float32 sum of counted weights per sequence
    response_tokens: torch.Tensor  # (num_seqs,) float32 response targets per sequence
    response_rows: torch.Tensor  # (R,) int64 every row with a label, in order (the reference pass scores each)
    ref_logps: torch.Tensor  # (num_seqs,) reference sums per sequence; empty in the reference pass
    loss_scale: torch.Tensor  # (1,) float: the micro-batch's summed pair losses are multiplied by it

    @property
    def num_seqs(self) -> int:
        return layout.num_seqs(self.pair_index.shape[0])

    @property
    def valid(self) -> torch.Tensor:
        """(max_pairs,) bool: the slots that hold a pair."""
        return self.pair_index >= 0


def reference_for(mb: MicroBatch, table: torch.Tensor) -> torch.Tensor:
    """(num_seqs,) the reference sums of a micro-batch's sequences from the (num_pairs, 2) table
    (columns chosen, rejected); 0 for empty slots."""
    index = torch.from_numpy(mb.pair_index)
    rows = torch.where((index >= 0)[:, None], table[index.clamp(min=0)], 0.0)
    return layout.join_sides(rows[:, 0], rows[:, 1])


def pipeline_tensors(mb: MicroBatch, ref_logps: torch.Tensor | None = None,
                     loss_scale: float = 1.0, pin: bool = False) -> tuple[StageInputs, LossInputs]:
    """(inputs, labels) for DeepSpeed's data iterator. ref_logps: None in the reference pass.
    pin: the labels in page-locked memory (a GPU run): the last stage copies them to the device as
    they are (DeepSpeed's labels.to(device)), a DMA from pinned memory instead of a staged copy. (The
    first stage's inputs are cloned by DeepSpeed before their copy, which would unpin them.)"""
    t = torch.from_numpy
    inputs = StageInputs(t(mb.input_ids), t(mb.position_ids), t(mb.cu_seqlens))
    labels = LossInputs(
        t(mb.labels), t(mb.weights), t(mb.seq_ids), t(mb.active_rows), t(mb.pair_index), t(mb.kept),
        t(mb.response_tokens), t(mb.response_rows), torch.empty(0) if ref_logps is None else ref_logps.float(),
        torch.tensor([loss_scale], dtype=torch.float32),
    )
    if pin:
        labels = LossInputs(*(t.pin_memory() for t in labels))
    return inputs, labels
