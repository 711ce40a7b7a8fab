"""The CUDA paths traced on fake CUDA tensors (torch's FakeTensorMode on this CPU-only build): the
model's forward and backward with each CUDA attention backend, the fused and the full-logits heads
and the last-stage Mask-DPO loss. Device, dtype, shape and signature mistakes fail here as they would
on the first GPU; the kernels take part as custom ops with fake implementations.

And torch.compile of the head and loss does not break its graph at the kernels (CPU, the reference
implementation behind the same custom ops)."""

import importlib.util

import fake_cuda
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from maskdpo.data.batch import LossInputs
from maskdpo.dpo.objective import MaskDPOObjective, SequenceSums
from maskdpo.kernels import IGNORE_INDEX
from maskdpo.model.architecture import Architecture
from maskdpo.model.llama import Llama

LENGTHS = [7, 5, 9, 3]  # chosen, rejected, chosen, rejected: two pairs packed in one micro-batch
CUDA = torch.device("cuda")


def tiny_config(tied: bool) -> Architecture:
    return Architecture(vocab_size=131, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)


def packed_batch(vocab: int):
    """Token ids, positions, cu_seqlens and the LossInputs of two pairs (CPU tensors)."""
    total = sum(LENGTHS)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (total,), generator=gen)
    positions = torch.cat([torch.arange(n) for n in LENGTHS])
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    seq_ids = torch.cat([torch.full((n,), s) for s, n in enumerate(LENGTHS)])
    labels = torch.roll(ids, -1)
    labels[cu[1:] - 1] = IGNORE_INDEX  # the last token of each sequence predicts nothing
    labels[positions < 2] = IGNORE_INDEX  # a two-token prompt
    weights = (torch.rand(total, generator=gen) > 0.3).float()
    active = ((labels != IGNORE_INDEX) & (weights != 0)).nonzero().squeeze(1)  # on the host, as the loader
    loss_inputs = LossInputs(
        labels=labels, weights=weights, seq_ids=seq_ids, active_rows=active, pair_index=torch.tensor([0, 1]),
        kept=torch.zeros(4).index_add(0, seq_ids[active], weights[active]),
        response_tokens=torch.zeros(4).index_add(0, seq_ids, (labels != IGNORE_INDEX).float()),
        response_rows=(labels != IGNORE_INDEX).nonzero().squeeze(1), ref_logps=-torch.rand(4, generator=gen) * 10,
        loss_scale=torch.tensor([0.5]))
    return ids, positions, cu, loss_inputs


def on_fake_cuda(t: torch.Tensor) -> torch.Tensor:
    """A fake CUDA tensor shaped as `t` (inside FakeTensorMode: factories can make CUDA tensors on a
    CPU-only build, copies to CUDA cannot; a fake tensor holds no values anyway)."""
    return torch.empty(t.shape, dtype=t.dtype, device=CUDA)


def hidden_states(model: Llama, ids, positions, cu, max_seqlen: int):
    x = model.embedding(ids)
    for layer in model.layers:
        x = layer(x, positions, cu, max_seqlen)
    return model.head.norm(x)


def head_weight(model: Llama):
    return model.embedding.embed_tokens.weight if model.head.lm_head is None else model.head.lm_head.weight


def step(model, head: str, ids, positions, cu, batch, max_seqlen: int):
    """The last stage's work for one micro-batch: forward, Mask-DPO loss, backward."""
    objective = MaskDPOObjective(SequenceSums(head, head_weight(model) if head == "fused" else None), beta=0.1)
    hidden = hidden_states(model, ids, positions, cu, max_seqlen)
    outputs = hidden if head == "fused" else torch.nn.functional.linear(hidden, head_weight(model))
    loss = objective(outputs, tuple(batch))
    fake_cuda.backward(loss)
    return loss


CUDA_BACKENDS = ["torch_varlen", "sdpa",
                 pytest.param("flash_attn", marks=pytest.mark.skipif(
                     importlib.util.find_spec("flash_attn") is None,
                     reason="flash-attn is not installed (it builds against CUDA only)"))]


@pytest.mark.slow  # the first run builds the device-guard extension (tests/fake_cuda.py)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("head", ["fused", "kernel"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_forward_and_backward_trace_on_fake_cuda(backend, head, tied):
    fake_cuda.enable()
    config = tiny_config(tied)
    ids, positions, cu, batch = packed_batch(config.vocab_size)
    with torch.device("meta"):  # parameters without storage; materialised as fake CUDA tensors below
        model = Llama(config, backend=backend).to(torch.bfloat16)
    # Meta parameters are inputs to empty_like here; the sdpa loop reads real boundaries (below).
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device=CUDA)
        ids, positions = on_fake_cuda(ids), on_fake_cuda(positions)
        batch = LossInputs(*(on_fake_cuda(t) for t in batch))
        # The sdpa loop reads the boundaries on the host (a synchronisation on a GPU): give it real ones.
        cu = cu if backend == "sdpa" else on_fake_cuda(cu)
        loss = step(model, head, ids, positions, cu, batch, max(LENGTHS))
        assert loss.device.type == "cuda" and loss.shape == () and loss.dtype == torch.float32
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert (p.grad.device.type, p.grad.dtype, p.grad.shape) == ("cuda", torch.bfloat16, p.shape), name


def test_fp32_on_cuda_refuses_the_flash_backends():
    """torch_varlen traced in fp32 fails in tracing, as it would on the GPU: the resolver must never pick it."""
    from maskdpo.model.attention import resolve_backend

    assert resolve_backend("auto", CUDA, torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="torch_varlen"):
        resolve_backend("torch_varlen", CUDA, torch.float32)


def _graph_breaks(fn, *args):
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [str(b.reason) for b in explanation.break_reasons]


@pytest.mark.slow  # torch.compile (dynamo and inductor): about 15 s
@pytest.mark.parametrize("head", ["fused", "kernel"])
def test_compiled_head_and_loss_have_no_graph_break(head):
    torch._dynamo.reset()
    config = tiny_config(tied=False)
    model = Llama(config, backend="sdpa")
    ids, positions, cu, batch = packed_batch(config.vocab_size)
    with torch.no_grad():
        hidden = hidden_states(model, ids, positions, cu, max(LENGTHS))
    weight = head_weight(model)

    def head_and_loss(hidden, weight, *batch):
        objective = MaskDPOObjective(SequenceSums(head, weight if head == "fused" else None), beta=0.1)
        outputs = hidden if head == "fused" else hidden @ weight.t()
        return objective(outputs, batch)

    breaks, reasons = _graph_breaks(head_and_loss, hidden.requires_grad_(True), weight, *batch)
    assert breaks == 0, reasons
    # And the compiled function trains: the same loss and gradients as eager.
    compiled = torch.compile(head_and_loss, fullgraph=True)
    h1 = hidden.detach().clone().requires_grad_(True)
    h2 = hidden.detach().clone().requires_grad_(True)
    eager_loss = head_and_loss(h1, weight, *batch)
    compiled_loss = compiled(h2, weight, *batch)
    eager_loss.backward()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(h2.grad, h1.grad)
