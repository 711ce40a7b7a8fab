"""The Mask-DPO objective, independent of DeepSpeed: the loss from per-sequence sums, the last
pipeline stage's loss function, and the reference log-probs cache."""
