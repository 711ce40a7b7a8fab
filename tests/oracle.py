"""The independent float64 oracle: plain autograd through log_softmax, no chunking, no tricks."""

import os

import torch

# Where the kernel tests run the kernels: the CPU (the Triton interpreter, tests/conftest.py) unless
# MASKDPO_TEST_DEVICE names a GPU (benchmarks/gpu_check.py: MASKDPO_TEST_DEVICE=cuda,
# TRITON_INTERPRET=0). The oracle always runs in float64 on the CPU.
TEST_DEVICE = torch.device(os.environ.get("MASKDPO_TEST_DEVICE", "cpu"))


def to_test_device(*tensors):
    return tuple(t.to(TEST_DEVICE) if isinstance(t, torch.Tensor) else t for t in tensors)


def oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs, grad_out=None, ignore_index=-100):
    """Return (out, grad_logits) in float64 for the rows' weighted log-prob sums per sequence."""
    x = logits.detach().double().requires_grad_(True)
    # Contributing rows: a label, a sequence and a non-zero weight (weight-0 rows are never read).
    active = (labels != ignore_index) & (seq_ids >= 0) & (weights != 0)
    logp = torch.log_softmax(x, dim=-1).gather(1, torch.where(active, labels, 0).long()[:, None]).squeeze(1)
    contrib = weights.double() * logp
    out = torch.zeros(num_seqs, dtype=torch.float64).index_add(0, seq_ids[active].long(), contrib[active])
    if grad_out is None:
        grad_out = torch.ones(num_seqs, dtype=torch.float64)
    if x.shape[0] and num_seqs:
        out.backward(grad_out.double())
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return out.detach(), grad


def make_rows(n, vocab, num_seqs, dtype, seed, scale=3.0, holes=True):
    """Random logits and row data with -1 seq ids, ignore_index holes, and 0/1 and soft weights."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, vocab, generator=gen)).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    seq_ids = torch.randint(0, max(num_seqs, 1), (n,), generator=gen) if num_seqs else torch.full((n,), -1)
    kind = torch.randint(0, 3, (n,), generator=gen)
    weights = torch.where(kind == 0, torch.rand(n, generator=gen), (kind == 1).float())
    if holes and n > 2:
        labels[::5] = -100
        seq_ids[1::7] = -1
    return logits, labels, weights, seq_ids
