"""Vocabulary-parallel sequence log-probs on 2 CPU processes (gloo) against the unsharded float64 result."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from oracle import make_rows, oracle_sequence_logps


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, dtype, peaked):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from maskdpo.kernels import sequence_logps

        n, vocab, num_seqs = 37, 127, 4
        logits, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, dtype, seed=3)
        if peaked:
            logits = logits.float()
            logits[torch.arange(n), labels.clamp(min=0)] = 24.0
            logits = logits.to(dtype)
        grad_out = torch.randn(num_seqs, generator=torch.Generator().manual_seed(1))
        bounds = [0, 70, vocab]  # unequal shards on purpose
        shard = logits[:, bounds[rank]:bounds[rank + 1]].clone().requires_grad_(True)
        out = sequence_logps(shard, labels, weights, seq_ids, num_seqs, vocab_group=dist.group.WORLD)
        out.backward(grad_out)
        ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs, grad_out)
        rtol, atol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-12, 1e-12)
        torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=atol)
        grad_tol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-10, 1e-12)
        torch.testing.assert_close(shard.grad.double(), ref_grad[:, bounds[rank]:bounds[rank + 1]],
                                   rtol=grad_tol[0], atol=grad_tol[1])
        if peaked:  # the true class's gradient, coef * (1 - p) ~ 1e-6: relative accuracy, where this rank owns it
            rows = torch.nonzero((labels >= bounds[rank]) & (labels < bounds[rank + 1]) & (weights != 0)
                                 & (seq_ids >= 0)).squeeze(1)
            got = shard.grad[rows, labels[rows] - bounds[rank]].double()
            expected = ref_grad[rows, labels[rows]]
            assert len(rows) and ((got - expected).abs() <= 1e-4 * expected.abs()).all()

        # The fused head over the same shards: hidden states in, W split by vocabulary.
        from maskdpo.kernels import linear_sequence_logps

        gen = torch.Generator().manual_seed(7)
        hidden = torch.randn(n, 16, generator=gen, dtype=torch.float64)
        weight = torch.randn(vocab, 16, generator=gen, dtype=torch.float64) / 4
        h = hidden.clone().requires_grad_(True)
        w_shard = weight[bounds[rank]:bounds[rank + 1]].clone().requires_grad_(True)
        fused = linear_sequence_logps(h, w_shard, labels, weights, seq_ids, num_seqs, chunk_rows=8, vocab_group=dist.group.WORLD)
        fused.backward(grad_out.double())
        h_ref, w_ref = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        ref_logits = h_ref @ w_ref.t()
        ref_fused, ref_grad_logits = oracle_sequence_logps(ref_logits, labels, weights, seq_ids, num_seqs, grad_out)
        ref_logits.backward(ref_grad_logits)
        torch.testing.assert_close(fused, ref_fused, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(w_shard.grad, w_ref.grad[bounds[rank]:bounds[rank + 1]], rtol=1e-9, atol=1e-10)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("dtype,peaked", [(torch.float32, False), (torch.float64, False), (torch.float32, True)],
                         ids=["fp32", "fp64", "fp32-peaked"])
def test_vocab_parallel_matches_unsharded(dtype, peaked):
    mp.spawn(_worker, args=(2, _free_port(), dtype, peaked), nprocs=2, join=True)
