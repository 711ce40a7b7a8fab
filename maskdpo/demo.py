"""A worked example of the fused kernel on one Mask-DPO pair, checked against float64 PyTorch."""

from __future__ import annotations

import time

import torch

# One pair: a prompt, then each response as (sentence length in tokens, annotator verdict).
PROMPT_TOKENS = 12
CHOSEN = [(9, "correct"), (7, "hallucinated"), (11, "correct")]
REJECTED = [(8, "correct"), (10, "hallucinated"), (6, "hallucinated")]


def _sequence(sentences, keep: str, seq_id: int):
    """Rows of one prompt+response: prompt rows count for nothing; kept sentences weigh 1."""
    weights = [0.0] * PROMPT_TOKENS
    for length, verdict in sentences:
        weights += [1.0 if verdict == keep else 0.0] * length
    return weights, [seq_id] * len(weights)


def timed(fn, device: torch.device, synchronize=torch.cuda.synchronize, clock=time.perf_counter):
    """(fn(), seconds). CUDA kernels run asynchronously: without a synchronisation before each clock
    read, the time would count the launches, not the work (nor the work still queued before it)."""
    if device.type == "cuda":
        synchronize()
    start = clock()
    result = fn()
    if device.type == "cuda":
        synchronize()
    return result, clock() - start


def run_kernel_demo(vocab: int = 32000, seed: int = 0) -> int:
    from maskdpo.kernels import sequence_logps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    w_c, s_c = _sequence(CHOSEN, "correct", 0)          # chosen: keep the correct sentences
    w_r, s_r = _sequence(REJECTED, "hallucinated", 1)   # rejected: keep the hallucinated ones
    gen = torch.Generator().manual_seed(seed)
    n = len(w_c) + len(w_r)
    logits = (3 * torch.randn(n, vocab, generator=gen)).to(device=device, dtype=torch.bfloat16)
    labels = torch.randint(0, vocab, (n,), generator=gen).to(device)
    weights = torch.tensor(w_c + w_r, device=device)
    seq_ids = torch.tensor(s_c + s_r, device=device)

    logits.requires_grad_(True)

    def forward_backward():
        out = sequence_logps(logits, labels, weights, seq_ids, 2)
        out.sum().backward()
        return out

    out, elapsed = timed(forward_backward, device)

    exact = logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(exact, -1).gather(1, labels[:, None]).squeeze(1)
    expected = torch.zeros(2, dtype=torch.float64, device=device).index_add(0, seq_ids, weights.double() * logp)
    expected.sum().backward()

    print(f"Mask-DPO pair, V={vocab}, N={n} rows of bf16 logits on {device} "
          f"({'Triton kernel' if device.type == 'cuda' else 'Triton interpreter'}), fwd+bwd {elapsed * 1e3:.1f} ms")
    print(f"{'sequence':<10}{'tokens':>8}{'kept':>6}{'kernel':>14}{'float64':>14}{'|diff|':>10}")
    for i, (name, w) in enumerate((("chosen", w_c), ("rejected", w_r))):
        diff = abs(out[i].item() - expected[i].item())
        print(f"{name:<10}{len(w):>8}{int(sum(w)):>6}{out[i].item():>14.4f}{expected[i].item():>14.4f}{diff:>10.2e}")
    grad_err = (logits.grad.double() - exact.grad).abs().max().item()
    out_err = (out.double() - expected).abs().max().item()
    print(f"max |grad - float64 grad| = {grad_err:.2e} (bf16 gradient)")
    ok = out_err < 1e-3 * max(1.0, expected.abs().max().item()) and grad_err < 1e-2
    print("OK: kernel matches float64 PyTorch" if ok else "MISMATCH against float64 PyTorch")
    return 0 if ok else 1
