"""The last pipeline stage's loss: logits -> per-sequence masked log-prob sums (fused kernel) -> Mask-DPO.

A packed micro-batch's label side is the tuple
    (labels (T,), weights (T,), seq_ids (T,), ref_logps (2 * max_pairs,), pair_index (max_pairs,),
     active_rows (K,))
with the p-th pair's chosen sequence at seq id 2p and its rejected one at 2p + 1; active_rows are the
K rows that count (kernels.contributing_rows), found by the data loader on the CPU.
"""

from __future__ import annotations

import torch

from .kernels import linear_sequence_logps, sequence_logps
from .loss import mask_dpo_loss


class StageLoss:
    """loss_fn for the PipelineModule. In "reference" mode it records the sums and returns 0.

    Per micro-batch it appends to `records`: the metrics dict (train mode) or
    (pair_index, sums (max_pairs, 2)) (reference mode). The owner empties it after each batch.
    """

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.mode = "train"
        self.records: list = []
        # Per-sequence masked log-prob sums; the fused kernel (benchmarks swap in an eager baseline).
        self.sequence_logps = sequence_logps
        # With a fused head the last stage outputs hidden states and this weight makes the logits,
        # a chunk at a time (linear_sequence_logps).
        self.head_weight = None

    def __call__(self, logits, labels):
        token_labels, weights, seq_ids, ref_logps, pair_index, active_rows = labels
        num_seqs = ref_logps.shape[0]
        if self.head_weight is not None:  # `logits` are the final hidden states here
            sums = linear_sequence_logps(logits, self.head_weight, token_labels, weights, seq_ids, num_seqs,
                                         active_rows=active_rows)
        else:  # the gradient may overwrite the logits: nothing else needs them after this point
            sums = self.sequence_logps(logits, token_labels, weights, seq_ids, num_seqs,
                                       inplace_backward=torch.is_grad_enabled() and logits.requires_grad)
        if self.mode == "reference":
            self.records.append((pair_index, sums.detach().view(-1, 2)))
            return sums.sum() * 0.0
        counted = seq_ids >= 0
        index = seq_ids.clamp(min=0)
        kept = torch.zeros(num_seqs, device=weights.device).index_add_(0, index, ((weights > 0) & counted).float())
        tokens = torch.zeros(num_seqs, device=weights.device).index_add_(0, index, counted.float())
        loss, metrics = mask_dpo_loss(
            sums[0::2], sums[1::2], ref_logps[0::2], ref_logps[1::2], beta=self.beta, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing, chosen_kept=kept[0::2], rejected_kept=kept[1::2],
            chosen_tokens=tokens[0::2], rejected_tokens=tokens[1::2], valid=pair_index >= 0,
        )
        metrics["pairs"] = (pair_index >= 0).sum().float()
        metrics["pair_index"] = pair_index  # to name the pairs of a micro-batch whose loss is not finite
        self.records.append(metrics)
        return loss
