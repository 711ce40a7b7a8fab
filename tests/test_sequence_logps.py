"""The fused sequence-logps Triton kernel (run by the interpreter) against a float64 PyTorch oracle.

Every test runs the kernel on the device under test (MASKDPO_TEST_DEVICE, the GPU check's cuda):
across implementations (the oracle on the CPU) results are compared with tolerances, bitwise only
run to run on one device."""

import importlib

import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import TEST_DEVICE, make_rows, oracle_sequence_logps, to_test_device

from maskdpo.kernels import masked_logps, sequence_logps
from maskdpo.kernels.launch import VARIANTS, Variant
from maskdpo.kernels.sequence_logps import InterpretedFunction, _sequence_logps_fwd_kernel

# Tolerances against float64, per logits dtype. The forward accumulates in fp32 from the exact
# input values, so it is tight for every dtype; gradients are rounded once to the logits dtype.
OUT_TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-5, 1e-4), torch.float16: (1e-5, 1e-4)}
GRAD_TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2 ** -8, 1e-6), torch.float16: (2 ** -10, 1e-7)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


KERNEL = importlib.import_module("maskdpo.kernels.sequence_logps")  # the package re-exports a same-named function


def one_variant_per_block_width() -> list[str]:
    """The launch variants this device can tell apart. The interpreter runs a row's program as one
    array program, so the warp count changes nothing there (test_warps_change_nothing_under_the_
    interpreter): the first variant of each block width stands for the others. A GPU runs them all."""
    if TEST_DEVICE.type != "cpu":
        return list(VARIANTS)
    widths = {}
    for name, variant in VARIANTS.items():
        widths.setdefault(variant.block_v, name)
    return list(widths.values())


TESTED_VARIANTS = one_variant_per_block_width()


def block_case(block, *values):
    """A test case of one launch path. On the CPU the GPU launch variants (1024-4096-column blocks, paid
    per block by the interpreter) run in the full suite only; the fast lane keeps the interpreter's
    whole-row block and the four-blocks-a-row path, which take every branch of the streaming loop."""
    slow = TEST_DEVICE.type == "cpu" and block in VARIANTS
    return pytest.param(block, *values, marks=pytest.mark.slow if slow else ())


BLOCK_NAMES = ["whole-row", "multi-block", *TESTED_VARIANTS]
BLOCKS = [block_case(b) for b in BLOCK_NAMES]


@pytest.fixture(params=BLOCKS)
def blocks(request, monkeypatch):
    """The launch variant to run: the interpreter's default takes a row in one block; GPUs stream it
    in several (every launch variant, and four blocks a row, which makes even small rows multi-block)."""
    if request.param == "whole-row":
        return None
    if request.param == "multi-block":  # four blocks per row, whatever V
        monkeypatch.setattr(KERNEL, "resolve", lambda variant, vocab, *_: Variant(max(16, triton.next_power_of_2(vocab) // 4), 1))
        return None
    return request.param


@pytest.mark.skipif(TEST_DEVICE.type != "cpu", reason="on a GPU the kernels are compiled")
def test_kernels_run_under_the_interpreter():
    assert isinstance(_sequence_logps_fwd_kernel, InterpretedFunction)


def run_kernel(logits, labels, weights, seq_ids, num_seqs, grad_out=None, **kw):
    """The kernel on the test device (CPU: interpreted), forward and backward; results on the CPU."""
    if grad_out is None:
        grad_out = torch.ones(num_seqs)
    logits, labels, weights, seq_ids, grad_out = to_test_device(logits, labels, weights, seq_ids, grad_out)
    x = logits.clone().requires_grad_(True)
    out = sequence_logps(x, labels, weights, seq_ids, num_seqs, **kw)
    out.backward(grad_out)
    return out.detach().cpu(), x.grad.cpu()


def assert_close(actual, expected, rtol, atol):
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, equal_nan=True)


SHAPES = [(1, 1), (1, 127), (37, 1), (37, 127), (37, 32000), (4, 128256)]
# The GPU launch variants stream a row in 1024-4096-column blocks, which the interpreter pays for per
# block: they run every shape but (37, 32000); the default and multi-block paths run them all.
VARIANT_SHAPES = [s for s in SHAPES if s != (37, 32000)]
BLOCKS_AND_SHAPES = [block_case(b, n, vocab) for b in BLOCK_NAMES
                     for n, vocab in (VARIANT_SHAPES if b in VARIANTS else SHAPES)]



@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocks,n,vocab", BLOCKS_AND_SHAPES, indirect=["blocks"])
def test_matches_float64(blocks, dtype, n, vocab):
    num_seqs = 5  # more sequences than some layouts fill: empty sequences must come out 0
    logits, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, dtype, seed=n + vocab)
    grad_out = torch.randn(num_seqs, generator=torch.Generator().manual_seed(1))
    out, grad = run_kernel(logits, labels, weights, seq_ids, num_seqs, grad_out, variant=blocks)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs, grad_out)
    assert out.dtype == torch.float32 and out.shape == (num_seqs,)
    assert grad.dtype == dtype and grad.shape == logits.shape
    assert_close(out, ref_out, *OUT_TOL[dtype])
    assert_close(grad, ref_grad, *GRAD_TOL[dtype])
    used = set(seq_ids[(labels != -100) & (seq_ids >= 0)].tolist())
    for s in set(range(num_seqs)) - used:
        assert out[s] == 0


@pytest.mark.slow  # with the variants it stands for
@pytest.mark.skipif(TEST_DEVICE.type != "cpu", reason="on a GPU every variant runs")
def test_warps_change_nothing_under_the_interpreter():
    """Why the CPU runs one variant per block width: variants that differ only in warps give bitwise
    the same sums and gradients under the interpreter, here over 3 blocks a row and a partial one."""
    logits, labels, weights, seq_ids = make_rows(6, 3 * 4096 + 5, 2, torch.bfloat16, seed=13)
    by_width = {}
    for name, variant in VARIANTS.items():
        by_width.setdefault(variant.block_v, []).append(name)
    assert any(len(names) > 1 for names in by_width.values())  # there is something to stand for
    for names in by_width.values():
        first = run_kernel(logits, labels, weights, seq_ids, 2, variant=names[0])
        for other in names[1:]:
            again = run_kernel(logits, labels, weights, seq_ids, 2, variant=other)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]), (names[0], other)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_error_at_most_twice_torch_own(dtype):
    """PyTorch run natively in bf16/fp16 sets the bar: our error against float64 is at most 2x its."""
    n, vocab, num_seqs = 37, 32000, 4
    logits, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, dtype, seed=7, holes=False)
    out, grad = run_kernel(logits, labels, weights, seq_ids, num_seqs)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs)

    x = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(x, -1).gather(1, labels[:, None]).squeeze(1)
    torch_out = torch.zeros(num_seqs, dtype=dtype).index_add(0, seq_ids, weights.to(dtype) * logp)
    torch_out.sum().backward()

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(out, ref_out) <= 2 * err(torch_out, ref_out)
    assert err(grad, ref_grad) <= 2 * err(x.grad, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gap", [17.5, 24.0])
def test_peaked_rows_keep_an_accurate_true_class_gradient(blocks, dtype, gap):
    """p(label) ~ 0.999 and ~ 1 - 1e-6: the true-class gradient coef * (1 - p) must stay accurate."""
    n, vocab = 8, 32000
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(n, vocab, generator=gen)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    logits[torch.arange(n), labels] = gap
    logits = logits.to(dtype)
    weights, seq_ids = torch.ones(n), torch.arange(n) % 2
    out, grad = run_kernel(logits, labels, weights, seq_ids, 2, variant=blocks)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, 2)
    p_label = torch.log_softmax(logits.double(), -1).gather(1, labels[:, None]).exp()
    assert (1 - p_label).max() < 2e-3  # really peaked
    true_class = grad[torch.arange(n), labels].double()
    expected = ref_grad[torch.arange(n), labels]
    error = (true_class - expected).abs()
    if dtype == torch.float32:
        # p_label - 1 in fp32 would be off by ~3% at gap 24; the sum of the other classes is not.
        allowed = 1e-4 * expected.abs()
    else:
        # One unit in the last place of the gradient's own dtype (subnormals included): the value
        # is as right as that dtype can hold it.
        info = torch.finfo(dtype)
        allowed = expected.abs().clamp(min=info.smallest_normal) * info.eps
    assert (error <= allowed).all(), (error / allowed).max()
    assert_close(out, ref_out, 1e-5, 1e-4)


@pytest.mark.parametrize("wide", [False, True], ids=["int32-columns", "int64-columns"])
def test_non_contiguous_logits(monkeypatch, wide):
    # The int64 column-offset path serves strides that reach 2**31 elements; force it on small data.
    monkeypatch.setattr(importlib.import_module("maskdpo.kernels.sequence_logps"), "_wide", lambda *_: wide)
    gen = torch.Generator().manual_seed(5)
    n, vocab = 9, 127
    _, labels, weights, seq_ids = make_rows(n, vocab, 3, torch.float32, seed=5)
    row_strided = torch.randn(n, 2 * vocab, generator=gen)[:, :vocab]       # stride(0) = 2V
    col_strided = torch.randn(vocab, n, generator=gen).t()                   # stride(1) = n
    for logits in (row_strided, col_strided):
        assert not logits.is_contiguous()
        out, grad = run_kernel(logits, labels, weights, seq_ids, 3)
        ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, 3)
        assert_close(out, ref_out, 1e-5, 1e-4)
        assert_close(grad, ref_grad, 1e-5, 1e-6)


def test_masked_logps_reads_a_shifted_view_in_place():
    b, t, vocab = 3, 6, 127
    gen = torch.Generator().manual_seed(11)
    values = torch.randn(b, t + 1, vocab, generator=gen, dtype=torch.bfloat16)
    labels = torch.randint(0, vocab, (b, t), generator=gen)
    labels[0, :2] = -100
    weights = (torch.rand(b, t, generator=gen) > 0.3).float()
    grad_out = torch.tensor([1.0, -2.0, 0.5])
    full = values.to(TEST_DEVICE).requires_grad_(True)
    logits = full[:, :-1]  # a strided (B, T, V) view, as after shifting
    out = masked_logps(logits, *to_test_device(labels, weights))
    out.backward(grad_out.to(TEST_DEVICE))
    seq_ids = torch.arange(b).repeat_interleave(t)
    ref_out, ref_grad = oracle_sequence_logps(values[:, :-1].reshape(b * t, vocab), labels.reshape(-1),
                                              weights.reshape(-1), seq_ids, b, grad_out)
    assert out.shape == (b,) and out.device == TEST_DEVICE
    assert_close(out.detach().cpu(), ref_out, 1e-5, 1e-4)
    assert_close(full.grad[:, :-1].reshape(b * t, vocab).cpu(), ref_grad, 2 ** -8, 1e-6)
    assert torch.all(full.grad[:, -1] == 0)


def test_every_output_element_is_written(monkeypatch):
    """Scratch and output buffers are NaN-poisoned: any element the kernels skip shows up."""
    module = KERNEL
    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(module, "_new_buffer", poisoned)
    n, vocab, num_seqs = 23, 127, 6
    logits, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, torch.bfloat16, seed=2)
    weights[3:6] = 0.0  # rows with zero coefficient take the zero-writing branch
    out, grad = run_kernel(logits, labels, weights, seq_ids, num_seqs)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert_close(out, ref_out, 1e-5, 1e-4)
    assert_close(grad, ref_grad, 2 ** -8, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_backward_is_identical_and_uses_the_logits_storage(dtype):
    logits, labels, weights, seq_ids = make_rows(29, 127, 4, dtype, seed=9)
    _, grad = run_kernel(logits, labels, weights, seq_ids, 4)  # on the device under test, as below

    logits, labels, weights, seq_ids = to_test_device(logits, labels, weights, seq_ids)
    leaf = logits.clone().requires_grad_(True)
    produced = leaf * 1  # a non-leaf, like the LM head's output, whose storage the backward reuses
    sequence_logps(produced, labels, weights, seq_ids, 4, inplace_backward=True).sum().backward()
    assert torch.equal(leaf.grad.cpu(), grad)  # the same kernel on the same device: bit for bit
    assert torch.equal(produced.detach().cpu(), grad)  # the logits' storage now holds the gradient


def test_deterministic_bitwise():
    logits, labels, weights, seq_ids = make_rows(64, 127, 3, torch.bfloat16, seed=4)
    first = run_kernel(logits, labels, weights, seq_ids, 3)
    second = run_kernel(logits, labels, weights, seq_ids, 3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_gradcheck_float64():
    logits, labels, weights, seq_ids = to_test_device(*make_rows(7, 5, 3, torch.float64, seed=1))
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: sequence_logps(z, labels, weights, seq_ids, 3), (x,))


def test_float64_logits_give_float64_sums():
    logits, labels, weights, seq_ids = make_rows(11, 127, 2, torch.float64, seed=8)
    out, grad = run_kernel(logits, labels, weights, seq_ids, 2)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, 2)
    assert out.dtype == torch.float64
    assert_close(out, ref_out, 1e-12, 1e-12)
    assert_close(grad, ref_grad, 1e-12, 1e-14)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 24),
    vocab=st.integers(1, 300),
    num_seqs=st.integers(0, 5),
    seed=st.integers(0, 2 ** 16),
    weight_kind=st.sampled_from(["zero", "binary", "soft"]),
)
def test_property_random_shapes_and_masks(n, vocab, num_seqs, seed, weight_kind):
    logits, labels, weights, seq_ids = make_rows(n, vocab, num_seqs, torch.float32, seed=seed)
    if weight_kind == "zero":
        weights = torch.zeros(n)
    elif weight_kind == "binary":
        weights = (weights > 0.5).float()
    grad_out = torch.randn(num_seqs, generator=torch.Generator().manual_seed(seed))
    out, grad = run_kernel(logits, labels, weights, seq_ids, num_seqs, grad_out)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, num_seqs, grad_out)
    assert_close(out, ref_out, 1e-5, 1e-4)
    assert_close(grad, ref_grad, 1e-5, 1e-6)


def test_empty_input_returns_zeros_and_backpropagates():
    logits = torch.empty(0, 127, device=TEST_DEVICE, requires_grad=True)
    out = sequence_logps(logits, *to_test_device(torch.empty(0, dtype=torch.long), torch.empty(0),
                                                 torch.empty(0, dtype=torch.long)), 3)
    assert torch.equal(out.cpu(), torch.zeros(3)) and out.device == TEST_DEVICE
    out.sum().backward()
    assert logits.grad.shape == (0, 127)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, on purpose
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_propagate_to_their_sequence_only(bad):
    logits, labels, weights, seq_ids = make_rows(12, 127, 2, torch.float32, seed=6, holes=False)
    seq_ids = torch.tensor([0] * 6 + [1] * 6)
    logits[8, 3] = bad
    out = sequence_logps(*to_test_device(logits, labels, weights, seq_ids), 2).cpu()
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


def test_unchecked_bad_values_are_never_silently_dropped():
    """What CUDA does by default (no host sync to check): bad rows poison outputs instead of vanishing."""
    logits, labels, weights, seq_ids = make_rows(10, 127, 3, torch.float32, seed=6, holes=False)
    seq_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    bad_label = labels.clone()
    bad_label[4] = 127
    out = sequence_logps(*to_test_device(logits, bad_label, weights, seq_ids), 3, check_values=False).cpu()
    assert torch.isfinite(out[[0, 2]]).all() and torch.isnan(out[1])
    bad_seq = seq_ids.clone()
    bad_seq[0] = 3
    assert torch.isnan(sequence_logps(*to_test_device(logits, labels, weights, bad_seq), 3, check_values=False)).all()


def test_leading_blocks_of_minus_inf_stay_finite(blocks):
    """Vocabulary masking can fill whole blocks with -inf; the online softmax must not make NaN."""
    logits, labels, weights, seq_ids = make_rows(9, 300, 2, torch.float32, seed=12, holes=False)
    logits[:, :200] = float("-inf")
    logits[4] = float("-inf")
    logits[4, 250] = 1.0  # a row with a single finite logit
    labels = torch.randint(200, 300, (9,), generator=torch.Generator().manual_seed(0))
    labels[4] = 250
    out, grad = run_kernel(logits, labels, weights, seq_ids, 2, variant=blocks)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, 2)
    assert torch.isfinite(out).all()
    assert_close(out, ref_out, 1e-5, 1e-4)
    assert_close(grad, ref_grad, 1e-5, 1e-6)


def test_weight_zero_rows_are_not_read():
    """Masked rows contribute nothing: NaN in their logits does not reach the sums or gradients."""
    logits, labels, weights, seq_ids = make_rows(8, 127, 1, torch.float32, seed=3, holes=False)
    weights[2] = 0.0
    clean = run_kernel(logits, labels, weights, seq_ids, 1)
    logits[2] = float("nan")
    dirty = run_kernel(logits, labels, weights, seq_ids, 1)
    assert torch.equal(clean[0], dirty[0]) and torch.equal(clean[1], dirty[1])


def test_weights_that_require_grad_are_refused():
    logits, labels, weights, seq_ids = to_test_device(*make_rows(5, 11, 1, torch.float32, seed=0))
    with pytest.raises(ValueError, match="weights require grad"):
        sequence_logps(logits, labels, weights.requires_grad_(True), seq_ids, 1)


def test_inplace_backward_guards():
    logits, labels, weights, seq_ids = to_test_device(*make_rows(6, 11, 1, torch.float32, seed=0, holes=False))
    leaf = logits.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="inplace_backward=True needs logits produced by an op"):
        sequence_logps(leaf, labels, weights, seq_ids, 1, inplace_backward=True)
    # Another op that saved the same logits fails loudly instead of using the gradient as values.
    produced = leaf * 1
    loss = (produced ** 2).sum() + sequence_logps(produced, labels, weights, seq_ids, 1, inplace_backward=True).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_double_backward_is_refused():
    logits, labels, weights, seq_ids = to_test_device(*make_rows(6, 11, 1, torch.float64, seed=0, holes=False))
    x = logits.clone().requires_grad_(True)
    out = sequence_logps(x, labels, weights, seq_ids, 1)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)  # grad_out depends on x
    with pytest.raises(RuntimeError, match="sequence_logps_bwd.* no autograd formula"):
        grad.sum().backward()
