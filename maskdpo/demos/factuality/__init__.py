"""`maskdpo demo factuality`: a world made in code where a model trained with Mask-DPO can be shown
to become more factual than the same model trained with plain DPO on the same pairs."""
