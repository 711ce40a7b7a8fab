"""The Mask-DPO loss from per-sequence masked log-prob sums.

    r_w = policy_chosen - ref_chosen        (sums over kept tokens: correct sentences)
    r_l = policy_rejected - ref_rejected    (sums over kept tokens: hallucinated sentences)
    z   = r_w - r_l

    sigmoid: -(1 - eps) * log sigmoid(beta * z) - eps * log sigmoid(-beta * z)   (eps: label smoothing)
    ipo:     (z' - 1 / (2 * beta))^2, z' = r_w / kept_w - r_l / kept_l with kept the sum of a side's
             token weights (its kept-token count for 0/1 masks; a side with nothing kept gives 0)
    hinge:   relu(1 - beta * z)

`mask_dpo_losses` gives the per-pair losses and rewards; `mask_dpo_loss` their mean, with metrics.
All-ones masks over the responses give plain DPO. Knows nothing of DeepSpeed or packing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_loss_options(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")


def mask_dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_kept: torch.Tensor | None = None,
    rejected_kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards), each (P,): the loss of every pair, and the
    detached rewards beta * (policy - ref) per side. chosen_kept / rejected_kept: the sums of each
    side's token weights, which ipo divides by."""
    check_loss_options(beta, loss_type, label_smoothing)
    chosen_ratio = _at_least_fp32(policy_chosen) - _at_least_fp32(ref_chosen)
    rejected_ratio = _at_least_fp32(policy_rejected) - _at_least_fp32(ref_rejected)
    if loss_type == "sigmoid":
        z = beta * (chosen_ratio - rejected_ratio)
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    else:
        if chosen_kept is None or rejected_kept is None:
            raise ValueError("loss_type='ipo' needs chosen_kept and rejected_kept (sums of the token weights)")

        def per_weight(ratio, kept):
            kept = kept.to(ratio.dtype)
            return torch.where(kept > 0, ratio / torch.where(kept > 0, kept, 1.0), 0.0)

        z = per_weight(chosen_ratio, chosen_kept) - per_weight(rejected_ratio, rejected_kept)
        losses = (z - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def mask_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_kept: torch.Tensor | None = None,
    rejected_kept: torch.Tensor | None = None,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, metrics) for P pairs; every input is a (P,) tensor. The loss is the mean over pairs.

    chosen_kept / rejected_kept: sums of each side's token weights; ipo needs them, and with
    chosen_tokens / rejected_tokens (response tokens per side) they give the kept fractions.
    Metrics are 0-d tensors (no host sync): rewards beta * (policy - ref) per side, reward accuracy
    (chosen reward > rejected), reward margin, and kept-token fractions when counts are given.
    valid: (P,) bool, False for slots without a pair; means are over valid pairs only (0 if none).
    """
    losses, chosen_rewards, rejected_rewards = mask_dpo_losses(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing,
        chosen_kept, rejected_kept)
    w = torch.ones_like(losses) if valid is None else valid.to(losses.dtype)
    count = w.sum().clamp(min=1)

    def mean(x):
        return torch.where(w > 0, x, 0.0).sum() / count

    loss = mean(losses)
    metrics = {
        "loss": loss.detach(),
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracy": mean((chosen_rewards > rejected_rewards).to(losses.dtype)),
        "rewards/margin": mean(chosen_rewards - rejected_rewards),
    }
    for side, kept, tokens in (("chosen", chosen_kept, chosen_tokens), ("rejected", rejected_kept, rejected_tokens)):
        if kept is not None and tokens is not None:
            metrics[f"kept_fraction/{side}"] = (kept.float() * w).sum() / (tokens.float() * w).sum().clamp(min=1)
    return loss, metrics
