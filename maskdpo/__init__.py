"""maskdpo: a training stack for Mask-DPO (Gu et al., ICLR 2025), fine-grained factuality alignment.

Mask-DPO keeps, in the preferred response, only the sentences an annotator judged factually correct
and, in the rejected response, only the hallucinated ones. `maskdpo.kernels` holds the fused Triton
kernel that turns logits into those sentence-masked per-sequence log-probs.
"""

__version__ = "0.1.0"
