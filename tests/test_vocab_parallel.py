"""Vocabulary-parallel sequence log-probs on 2 CPU processes (gloo) against the unsharded float64 result;
what each call exchanges and reads on the host; the backward kernels' rule for a label another rank holds."""

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
        from maskdpo.kernels.vocab_parallel import VocabShard, vocab_parallel_sequence_logps

        n, vocab, num_seqs = 37, 127, 4
        logits, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, dtype, seed=3)
        if peaked:
            logits = logits.float()
            logits[torch.arange(n), labels.clamp(min=0)] = 24.0
            logits = logits.to(dtype)
        grad_out = torch.randn(num_seqs, generator=torch.Generator().manual_seed(1))
        bounds = [0, 70, vocab]  # unequal shards on purpose
        place = VocabShard(dist.group.WORLD, bounds[rank], vocab)
        assert VocabShard.exchange(bounds[rank + 1] - bounds[rank]) == VocabShard(None, bounds[rank], vocab)
        shard = logits[:, bounds[rank]:bounds[rank + 1]].clone().requires_grad_(True)
        out = vocab_parallel_sequence_logps(shard, labels, weights, seq_ids, num_seqs, shard=place)
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
        fused = linear_sequence_logps(h, w_shard, labels, weights, seq_ids, num_seqs, chunk_rows=8, vocab_shard=place)
        fused.backward(grad_out.double())
        h_ref, w_ref = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        ref_logits = h_ref @ w_ref.t()
        ref_fused, ref_grad_logits = oracle_sequence_logps(ref_logits, labels, weights, seq_ids, num_seqs, grad_out)
        ref_logits.backward(ref_grad_logits)
        torch.testing.assert_close(fused, ref_fused, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(w_shard.grad, w_ref.grad[bounds[rank]:bounds[rank + 1]], rtol=1e-9, atol=1e-10)

        # A 5-chunk fused call with its rows given and values unchecked (as the pipeline calls it):
        # 2 all-reduces per chunk forward, 1 backward (the hidden states' gradient), nothing
        # gathered (the shard's place is given); and bitwise the same when repeated.
        from dispatched import collectives

        from maskdpo.kernels import contributing_rows

        rows = contributing_rows(labels, weights, seq_ids, num_seqs)
        chunk = -(-rows.numel() // 5)
        assert -(-rows.numel() // chunk) == 5

        def fused_step(record):
            hs, ws = hidden.clone().requires_grad_(True), w_shard.detach().clone().requires_grad_(True)
            with collectives() as forward:
                sums = linear_sequence_logps(hs, ws, labels, weights, seq_ids, num_seqs, chunk_rows=chunk,
                                             vocab_shard=place, active_rows=rows, check_values=False)
            with collectives() as backward:
                sums.backward(grad_out.double())
            record.update(forward=forward, backward=backward)
            return sums.detach(), hs.grad, ws.grad

        record = {}
        first = fused_step(record)
        assert record == {"forward": ["all_reduce"] * 10, "backward": ["all_reduce"]}, record
        assert all(torch.equal(a, b) for a, b in zip(first, fused_step({})))
        torch.testing.assert_close(first[0], ref_fused, rtol=1e-10, atol=1e-10)

        # A shard placed where the ranks' shards do not put it (rank 1 says 0) is refused, by every
        # rank alike, where values are checked.
        wrong = VocabShard(dist.group.WORLD, 0, vocab)
        try:
            vocab_parallel_sequence_logps(shard.detach(), labels, weights, seq_ids, num_seqs, shard=wrong)
        except ValueError as e:
            assert "the vocab_shard of rank 1 says its ids start at 0 of 127, but the ranks' shards in rank order put " \
                   "them at 70 of 127" in str(e), e
        else:
            raise AssertionError("a wrong vocab_shard was not refused")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("dtype,peaked", [(torch.float32, False), (torch.float64, False), (torch.float32, True)],
                         ids=["fp32", "fp64", "fp32-peaked"])
def test_vocab_parallel_matches_unsharded(dtype, peaked):
    mp.spawn(_worker, args=(2, _free_port(), dtype, peaked), nprocs=2, join=True)


def test_a_label_outside_the_shard_gets_no_label_column_in_either_backward():
    """The kernel and the reference write g * w * (onehot(label) - softmax) with no onehot part for a
    label outside [0, V): what a vocabulary shard's row needs when another rank holds its label."""
    from maskdpo.kernels import reference
    from maskdpo.kernels.sequence_logps import backward_into

    n, vocab = 9, 40
    logits, labels, weights, seq_ids = make_rows(n, vocab, 2, torch.float32, seed=5, holes=False)
    weights = torch.ones(n)
    labels[::2] = torch.tensor([vocab, vocab + 7, -1, vocab + 1, -2])  # held elsewhere, either side
    lse = torch.logsumexp(logits.double(), -1).float()
    rest = torch.rand(n)  # 1 - p_label, from the ranks together: used only where the label is here
    grad_out = torch.tensor([0.5, -2.0])
    coef = grad_out[seq_ids] * weights
    expected = -coef[:, None].double() * torch.softmax(logits.double(), -1)
    here = (labels >= 0) & (labels < vocab)
    expected[here.nonzero().squeeze(1), labels[here]] = (coef * rest)[here].double()
    for name, backward in (("reference", reference.backward_into), ("kernel", None)):
        grad = torch.empty_like(logits)
        if backward is None:
            backward_into(grad[None], grad_out, logits[None], labels, weights, seq_ids, lse, rest, 2, -100)
        else:
            backward(grad, grad_out, logits, labels, weights, seq_ids, lse, rest, 2, -100)
        torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_the_vocabulary_parallel_pieces_read_nothing_on_the_host():
    """What the vocabulary-parallel head does besides its all-reduces (tested above): the shard's
    columns, the segment sum, the backward from the global statistics; none reads a device value."""
    from dispatched import HOST_READS, ops_dispatched

    from maskdpo.kernels.sequence_logps import segment_sum
    from maskdpo.kernels.vocab_parallel import VocabShard, local_labels, shard_backward_into

    logits, labels, weights, seq_ids = make_rows(30, 50, 3, torch.float32, seed=2)
    active = (labels != -100) & (seq_ids >= 0) & (weights != 0)
    shard = VocabShard(None, 20, 90)
    seen = ops_dispatched(lambda: local_labels(labels + 20, active, shard, 50, -100))
    seen |= ops_dispatched(lambda: segment_sum(torch.randn(30), seq_ids, 3))
    local, _ = local_labels(labels + 10, active, shard, 50, -100)
    seen |= ops_dispatched(lambda: shard_backward_into(torch.empty_like(logits), torch.ones(3), logits, local, weights,
                                                       seq_ids, torch.zeros(30), torch.rand(30), 3, -100))
    assert not seen & HOST_READS, seen & HOST_READS
    expected = torch.zeros(3, dtype=torch.float64)
    values = torch.randn(30, dtype=torch.float64)
    for i, s in enumerate(seq_ids.tolist()):
        if s >= 0:
            expected[s] += values[i]
    torch.testing.assert_close(segment_sum(values, seq_ids, 3), expected, rtol=1e-12, atol=1e-12)
