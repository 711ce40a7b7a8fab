"""The last pipeline stage's side of Mask-DPO: head outputs -> per-sequence masked log-prob sums ->
the loss of the step's pairs, normalised by the step's pair count, and the metrics.

Two loss functions for the pipeline, each a plain callable `(outputs, labels) -> tensor` over a
micro-batch's `LossInputs` (maskdpo.data.batch):
  MaskDPOObjective  training: sum of the micro-batch's pair losses times its loss_scale, so that
                    whatever the packing, the step's loss is the mean over all of its pairs
  ReferenceTokenLogps  the reference pass: the log-prob of every labelled row
Knows nothing of DeepSpeed; the engine decides which one the pipeline runs.
"""

from __future__ import annotations

import torch

from ..data import layout
from ..data.batch import LossInputs
from ..kernels import contributes, linear_sequence_logps, sequence_logps
from .loss import check_loss_options, mask_dpo_losses

HEADS = ("fused", "kernel", "eager")
"""How the last stage goes from its output to the sums:
fused   hidden states -> linear_sequence_logps (chunks of logits, never the whole; the default)
kernel  full logits -> the sequence_logps Triton kernel (gradient written over the logits)
eager   full logits -> fp32 log_softmax, gather, weighted sums in plain PyTorch (the baseline
        a plain PyTorch DPO trainer runs; benchmarks compare against it)"""


def eager_sequence_logps(logits, labels, weights, seq_ids, num_seqs):
    """What a plain PyTorch DPO trainer does: the whole fp32 log-softmax, then gather and sum."""
    keep = contributes(labels, weights, seq_ids, num_seqs)
    upcast = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 for bf16 logits
    logp = torch.log_softmax(upcast, -1).gather(1, torch.where(keep, labels, 0)[:, None]).squeeze(1)
    contrib = torch.where(keep, weights * logp, 0.0)
    return torch.zeros(num_seqs, device=logits.device, dtype=contrib.dtype).index_add(
        0, torch.where(keep, seq_ids, 0), contrib)


class SequenceSums:
    """(outputs, LossInputs) -> (num_seqs,) masked log-prob sums, by the chosen head.

    With the fused head the last stage outputs hidden states and `weight` (the LM head's, or the
    tied embedding) makes the logits a chunk at a time."""

    def __init__(self, head: str = "fused", weight: torch.Tensor | None = None, vocab_shard=None):
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
        if head == "fused" and weight is None:
            raise ValueError("the fused head needs the LM head's weight")
        if vocab_shard is not None and head != "fused":
            raise ValueError(f"a vocabulary split across tensor-parallel ranks needs the fused head, not {head!r}")
        # vocab_shard (maskdpo.kernels.vocab_parallel.VocabShard): where this rank's rows of the
        # vocabulary lie when `weight` is its shard of the LM head (tensor parallelism).
        self.head, self.weight, self.vocab_shard = head, weight, vocab_shard

    def __call__(self, outputs: torch.Tensor, batch: LossInputs) -> torch.Tensor:
        return self.compute(outputs, batch.labels, batch.weights, batch.seq_ids, batch.num_seqs, batch.active_rows)

    def compute(self, outputs, labels, weights, seq_ids, num_seqs, active_rows) -> torch.Tensor:
        rows = (labels, weights, seq_ids, num_seqs)
        if self.head == "fused":
            return linear_sequence_logps(outputs, self.weight, *rows, active_rows=active_rows,
                                         vocab_shard=self.vocab_shard)
        if self.head == "eager":
            return eager_sequence_logps(outputs, *rows)
        # The gradient may overwrite the logits: nothing else needs them after this point.
        return sequence_logps(outputs, *rows, inplace_backward=torch.is_grad_enabled() and outputs.requires_grad)


# Per-step sums the metrics are made of, in this order (one vector, one all-reduce).
SUMS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "kept/chosen",
        "kept/rejected", "response_tokens/chosen", "response_tokens/rejected", "pairs")


def step_metrics(totals: torch.Tensor) -> dict[str, float]:
    """Pair-weighted means (and kept fractions over all response tokens) from the step's sums."""
    t = dict(zip(SUMS, totals.double().tolist()))
    pairs = max(t["pairs"], 1.0)
    metrics = {name: t[name] / pairs for name in SUMS[:5]}
    for side in layout.SIDES:
        metrics[f"kept_fraction/{side}"] = t[f"kept/{side}"] / max(t[f"response_tokens/{side}"], 1.0)
    metrics["pairs"] = t["pairs"]
    return metrics


class MaskDPOObjective:
    """The training loss function: Mask-DPO over a micro-batch's pairs, scaled by its loss_scale.

    Accumulates the metric sums of every micro-batch it sees on the device (no host sync) until
    `take()`, with the pair slots and their loss's finiteness, to name the pairs of a bad step.
    """

    def __init__(self, sums: SequenceSums, beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0):
        check_loss_options(beta, loss_type, label_smoothing)
        self.sums, self.beta, self.loss_type, self.label_smoothing = sums, beta, loss_type, label_smoothing
        self._totals: torch.Tensor | None = None
        self._finite: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, outputs: torch.Tensor, labels) -> torch.Tensor:
        batch = LossInputs(*labels)
        policy_chosen, policy_rejected = layout.split_sides(self.sums(outputs, batch))
        ref_chosen, ref_rejected = layout.split_sides(batch.ref_logps)
        kept_chosen, kept_rejected = layout.split_sides(batch.kept)
        losses, chosen_rewards, rejected_rewards = mask_dpo_losses(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
            self.label_smoothing, kept_chosen, kept_rejected)
        valid = batch.valid
        loss_sum = torch.where(valid, losses, 0.0).sum()
        self._record(batch, valid, losses, chosen_rewards, rejected_rewards)
        return loss_sum * batch.loss_scale.to(loss_sum.dtype).squeeze()

    def _record(self, batch, valid, losses, chosen_rewards, rejected_rewards) -> None:
        tokens_chosen, tokens_rejected = layout.split_sides(batch.response_tokens)
        kept_chosen, kept_rejected = layout.split_sides(batch.kept)

        def total(x):
            return torch.where(valid, x.detach().double(), 0.0).sum()

        row = torch.stack([total(losses), total(chosen_rewards), total(rejected_rewards),
                           total((chosen_rewards > rejected_rewards).double()),
                           total(chosen_rewards - rejected_rewards), total(kept_chosen), total(kept_rejected),
                           total(tokens_chosen), total(tokens_rejected), valid.double().sum()])
        self._totals = row if self._totals is None else self._totals + row
        self._finite.append((batch.pair_index, torch.isfinite(losses.detach()) | ~valid))

    def take(self, device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """(the sums since the last take, in SUMS order, on `device`; the pair indices whose loss was
        not finite) and reset. Ranks that computed no loss give zeros and no pairs."""
        totals = torch.zeros(len(SUMS), dtype=torch.float64, device=device) if self._totals is None \
            else self._totals.to(device)
        bad = []
        if self._finite:  # one transfer for the whole step
            index = torch.cat([index for index, _ in self._finite])
            finite = torch.cat([finite for _, finite in self._finite])
            bad = [int(i) for i in index[~finite].cpu()]
        self._totals, self._finite = None, []
        return totals, bad


class ReferenceTokenLogps:
    """The reference pass's loss function: the log-prob of every labelled row of the micro-batch
    (response_rows, whatever its weight; 0 at other rows), each row its own "sequence" of the same
    kernels, so that
    sums under any weights (another label mapping, soft weights, end-of-turn choice) are a weighted
    sum on the CPU, never another pass."""

    def __init__(self, sums: SequenceSums):
        self.sums = sums

    def __call__(self, outputs: torch.Tensor, labels) -> torch.Tensor:
        batch = LossInputs(*labels)
        rows = batch.response_rows
        own = torch.full_like(batch.seq_ids, -1)
        own[rows] = torch.arange(rows.numel(), device=rows.device)
        ones = torch.zeros_like(batch.weights)
        ones[rows] = 1.0
        logps = self.sums.compute(outputs, batch.labels, ones, own, rows.numel(), rows).detach().float()
        # Laid out by row, (budget,): DeepSpeed adds up what the loss function returns across
        # micro-batches, so its shape may not vary with the number of labelled rows.
        return torch.zeros(batch.labels.shape[0], device=logps.device).index_copy_(0, rows, logps)
