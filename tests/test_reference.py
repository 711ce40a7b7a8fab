"""The PyTorch reference (the CPU path without the interpreter) against the float64 oracle."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from oracle import make_rows, oracle_sequence_logps

from maskdpo.kernels import reference

TOL = {torch.float32: ((1e-5, 1e-4), (1e-5, 1e-6)), torch.bfloat16: ((1e-5, 1e-4), (2 ** -8, 1e-6))}


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("chunk_elements", [1 << 24, 300])  # one chunk, and several rows per chunk
def test_reference_matches_float64(monkeypatch, dtype, chunk_elements):
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", chunk_elements)
    logits, labels, weights, seq_ids = make_rows(37, 127, 5, dtype, seed=3)
    grad_out = torch.randn(5, generator=torch.Generator().manual_seed(0))
    x = logits.clone().requires_grad_(True)
    out = reference.sequence_logps(x, labels, weights, seq_ids, 5)
    out.backward(grad_out)
    ref_out, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, 5, grad_out)
    (out_rtol, out_atol), (grad_rtol, grad_atol) = TOL[dtype]
    torch.testing.assert_close(out.double(), ref_out, rtol=out_rtol, atol=out_atol)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=grad_rtol, atol=grad_atol)


def test_reference_inplace_backward_and_peaked_rows():
    n, vocab = 6, 32000
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(n, vocab, generator=gen)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    logits[torch.arange(n), labels] = 24.0  # 1 - p(label) ~ 2e-6
    weights, seq_ids = torch.ones(n), torch.zeros(n, dtype=torch.long)
    leaf = logits.clone().requires_grad_(True)
    produced = leaf * 1
    reference.sequence_logps(produced, labels, weights, seq_ids, 1, inplace_backward=True).sum().backward()
    _, ref_grad = oracle_sequence_logps(logits, labels, weights, seq_ids, 1)
    assert torch.equal(produced.detach(), leaf.grad)
    true_class = leaf.grad[torch.arange(n), labels].double()
    expected = ref_grad[torch.arange(n), labels]
    assert ((true_class - expected).abs() <= 1e-4 * expected.abs()).all()


@pytest.mark.slow
def test_cpu_without_interpreter_runs_the_reference(tmp_path):
    """A CPU user who has not set TRITON_INTERPRET gets the PyTorch path, with the same results."""
    script = textwrap.dedent("""
        import torch
        from maskdpo.kernels import sequence_logps, masked_logps
        from maskdpo.kernels.sequence_logps import _uses_triton
        assert not _uses_triton(torch.device("cpu"))
        torch.manual_seed(0)
        logits = torch.randn(10, 50, dtype=torch.float64, requires_grad=True)
        labels = torch.randint(0, 50, (10,))
        seq_ids = torch.tensor([0] * 5 + [1] * 5)
        out = sequence_logps(logits, labels, torch.ones(10), seq_ids, 2)
        expected = torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1).view(2, 5).sum(1)
        assert torch.allclose(out, expected, atol=1e-12), (out, expected)
        assert torch.autograd.gradcheck(lambda z: sequence_logps(z, labels, torch.ones(10), seq_ids, 2), (logits,))
        padded = masked_logps(logits.view(2, 5, 50), labels.view(2, 5), torch.ones(2, 5))
        assert torch.allclose(padded, expected, atol=1e-12)
        print("reference path ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "reference path ok" in result.stdout


def test_reference_with_no_sequences():
    logits, labels, weights, seq_ids = make_rows(5, 11, 0, torch.float32, seed=0)
    x = logits.clone().requires_grad_(True)
    out = reference.sequence_logps(x, labels, weights, seq_ids, 0)
    out.sum().backward()
    assert out.shape == (0,) and torch.equal(x.grad, torch.zeros_like(x))
