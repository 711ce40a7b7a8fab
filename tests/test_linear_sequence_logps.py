"""linear_sequence_logps (hidden states in, never the whole logits) against float64 hidden @ W.T."""

import pytest
import torch
from dispatched import HOST_READS, ops_dispatched
from oracle import TEST_DEVICE, make_rows, oracle_sequence_logps, to_test_device

from maskdpo.kernels import contributing_rows, linear_sequence_logps

TOL = {torch.float32: dict(out=(1e-5, 1e-3), grad=(1e-4, 1e-5)), torch.bfloat16: dict(out=(1e-2, 0.5), grad=(3e-2, 1e-2))}


def oracle(hidden, weight, labels, weights, seq_ids, num_seqs, grad_out):
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    logits = h @ w.t()
    out, grad_logits = oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs, grad_out)
    logits.backward(grad_logits)
    return out, h.grad, w.grad


def inputs(n, hidden_size, vocab, num_seqs, dtype, seed, zero_fraction=0.3):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hidden_size, generator=gen).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size ** 0.5).to(dtype)
    _, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, torch.float32, seed)
    weights[torch.rand(n, generator=gen) < zero_fraction] = 0.0
    return hidden, weight, labels, weights, seq_ids


def run(hidden, weight, labels, weights, seq_ids, num_seqs, grad_out, **kw):
    """The fused head on the test device (oracle.TEST_DEVICE), forward and backward; results on the CPU."""
    hidden, weight, labels, weights, seq_ids, grad_out = to_test_device(hidden, weight, labels, weights, seq_ids,
                                                                        grad_out)
    kw = {k: v.to(TEST_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out = linear_sequence_logps(h, w, labels, weights, seq_ids, num_seqs, **kw)
    out.backward(grad_out)
    return out.detach().cpu(), h.grad.cpu(), w.grad.cpu()


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("n", [1, 333])
def test_matches_float64(dtype, n):
    num_seqs = 4
    args = inputs(n, 48, 1000, num_seqs, dtype, seed=n)
    grad_out = torch.randn(num_seqs, generator=torch.Generator().manual_seed(0))
    out, grad_h, grad_w = run(*args, num_seqs, grad_out, chunk_rows=64)
    ref_out, ref_h, ref_w = oracle(*args, num_seqs, grad_out)
    assert grad_h.dtype == dtype and grad_w.dtype == dtype
    (ro, ao), (rg, ag) = TOL[dtype]["out"], TOL[dtype]["grad"]
    torch.testing.assert_close(out.double(), ref_out, rtol=ro, atol=ao)
    torch.testing.assert_close(grad_h.double(), ref_h, rtol=rg, atol=ag)
    torch.testing.assert_close(grad_w.double(), ref_w, rtol=rg, atol=ag)


def test_chunk_size_invariance_and_compaction_when_most_weights_are_zero():
    args = inputs(200, 48, 1000, 3, torch.float32, seed=5, zero_fraction=0.9)
    grad_out = torch.tensor([1.0, -0.5, 2.0])
    small = run(*args, 3, grad_out, chunk_rows=3)
    large = run(*args, 3, grad_out, chunk_rows=10_000)
    for a, b in zip(small, large):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ref_out, ref_h, _ = oracle(*args, 3, grad_out)
    torch.testing.assert_close(small[0].double(), ref_out, rtol=1e-5, atol=1e-3)
    zero_rows = args[3] == 0
    assert torch.all(small[1][zero_rows] == 0)  # compacted away: no gradient, no work


def test_all_zero_weights_and_peaked_logits():
    hidden, weight, labels, weights, seq_ids = inputs(40, 48, 1000, 2, torch.float32, seed=2)
    out, grad_h, grad_w = run(hidden, weight, labels, torch.zeros(40), seq_ids, 2, torch.ones(2))
    assert torch.equal(out, torch.zeros(2)) and not grad_h.any() and not grad_w.any()
    weights = torch.ones(40)
    seq_ids = torch.arange(40) % 2
    labels = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(1))
    weight = weight.clone()
    weight[labels] += 3 * hidden / hidden.norm(dim=1, keepdim=True) * 8  # the label's logit far above the rest
    out, grad_h, grad_w = run(hidden, weight, labels, weights, seq_ids, 2, torch.ones(2))
    ref_out, ref_h, ref_w = oracle(hidden, weight, labels, weights, seq_ids, 2, torch.ones(2))
    assert (ref_out / 20).exp().min() > 0.9  # really peaked: p(label) close to 1 on average
    torch.testing.assert_close(grad_h.double(), ref_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_w.double(), ref_w, rtol=1e-4, atol=1e-6)


def test_bad_shapes_are_named():
    hidden, weight, labels, weights, seq_ids = to_test_device(*inputs(5, 48, 100, 1, torch.float32, seed=0))
    with pytest.raises(ValueError, match=r"lm_head_weight must have shape \(V, 48\)"):
        linear_sequence_logps(hidden, weight[:, :40], labels, weights, seq_ids, 1)
    with pytest.raises(ValueError, match="chunk_rows must be a positive int"):
        linear_sequence_logps(hidden, weight, labels, weights, seq_ids, 1, chunk_rows=0)


def test_active_rows_give_the_same_result_without_reading_values_on_the_host():
    args = inputs(150, 48, 1000, 3, torch.float32, seed=7, zero_fraction=0.6)
    labels, weights, seq_ids = args[2:]
    grad_out = torch.tensor([0.5, -1.0, 2.0])
    rows = contributing_rows(labels, weights, seq_ids, 3)
    assert rows.dtype == torch.int64 and 0 < rows.numel() < 150
    expected = run(*args, 3, grad_out, chunk_rows=16)
    given = run(*args, 3, grad_out, chunk_rows=16, active_rows=rows)
    for a, b in zip(expected, given):
        assert torch.equal(a, b)  # the same rows in the same order: bit for bit

    def call(**kw):
        h, w = args[0].clone().requires_grad_(True), args[1].clone().requires_grad_(True)
        linear_sequence_logps(h, w, labels, weights, seq_ids, 3, chunk_rows=16, check_values=False, **kw).backward(grad_out)

    assert not ops_dispatched(lambda: call(active_rows=rows)) & HOST_READS
    assert "nonzero" in ops_dispatched(call)  # without them, the rows are found with a host read


def test_empty_active_rows_give_zeros():
    hidden, weight, labels, _, seq_ids = inputs(20, 48, 1000, 2, torch.float32, seed=3)
    out, grad_h, grad_w = run(hidden, weight, labels, torch.zeros(20), seq_ids, 2, torch.ones(2),
                              active_rows=torch.zeros(0, dtype=torch.int64))
    assert torch.equal(out, torch.zeros(2)) and not grad_h.any() and not grad_w.any()


def test_wrong_active_rows_are_named():
    hidden, weight, labels, weights, seq_ids = to_test_device(*inputs(50, 48, 1000, 2, torch.float32, seed=4))
    rows = contributing_rows(labels, weights, seq_ids, 2)
    with pytest.raises(ValueError, match=rf"active_rows must be a 1-D int64 tensor on {hidden.device}, got torch.int32"):
        linear_sequence_logps(hidden, weight, labels, weights, seq_ids, 2, active_rows=rows.int())
    # Checked against the data where values are checked: by default on the CPU only, asked for here.
    with pytest.raises(ValueError, match=rf"are not the contributing rows .*first differ at position 1: expected "
                                         rf"{int(rows[1])}, got {int(rows[2])}"):
        linear_sequence_logps(hidden, weight, labels, weights, seq_ids, 2, active_rows=torch.cat([rows[:1], rows[2:]]),
                              check_values=True)
    with pytest.raises(ValueError, match=r"expected the end, got 50"):
        linear_sequence_logps(hidden, weight, labels, weights, seq_ids, 2, check_values=True,
                              active_rows=torch.cat([rows, torch.tensor([50], device=rows.device)]))


@pytest.mark.slow  # 64 interpreted chunks, forward and backward: about 11 s
def test_bf16_weight_gradient_summed_over_many_chunks():
    # 64 chunks of 8 rows. Summed in bf16 (the default) the running sum is rounded once per chunk;
    # in an fp32 buffer only each chunk's product is. Both stay near float64, fp32 measurably nearer.
    args = inputs(512, 48, 1000, 4, torch.bfloat16, seed=11, zero_fraction=0.0)
    grad_out = torch.ones(4)
    _, _, ref_w = oracle(*args, 4, grad_out)
    errors = {}
    for accum_dtype in (None, torch.float32):
        _, _, grad_w = run(*args, 4, grad_out, chunk_rows=8, accum_dtype=accum_dtype)
        assert grad_w.dtype == torch.bfloat16
        errors[accum_dtype] = float((grad_w.double() - ref_w).norm() / ref_w.norm())
    assert errors[torch.float32] < 2 ** -8 and errors[None] < 2 ** -6
    assert errors[torch.float32] < 0.5 * errors[None]


def test_bad_accum_dtype_is_named():
    hidden, weight, labels, weights, seq_ids = to_test_device(*inputs(10, 48, 1000, 2, torch.float32, seed=4))
    with pytest.raises(ValueError, match=r"accum_dtype must be None or a floating dtype that holds every value of "
                                         r"lm_head_weight's \(torch.float32\), got torch.bfloat16"):
        linear_sequence_logps(hidden, weight, labels, weights, seq_ids, 2, accum_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="got torch.float16"):  # narrower range than bf16
        linear_sequence_logps(hidden.bfloat16(), weight.bfloat16(), labels, weights, seq_ids, 2,
                              accum_dtype=torch.float16)
    with pytest.raises(ValueError, match="accum_dtype"):
        linear_sequence_logps(hidden, weight, labels, weights, seq_ids, 2, accum_dtype="float32")
