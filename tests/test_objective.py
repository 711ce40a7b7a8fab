"""The last stage's objective in one process: all-ones masks are plain DPO; masks only drop their own
terms; every head gives the same loss and gradients; the micro-batch contract holds."""

import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_hf_llama

from maskdpo.data import LabelMap, Pair, Response, Sentence, encode_pair, load_tokenizer, pack_pairs
from maskdpo.data.batch import LossInputs, pipeline_tensors
from maskdpo.dpo.objective import MaskDPOObjective, SequenceSums, step_metrics
from maskdpo.model.hf import load_llama
from maskdpo.train.engine import check_parallelism, deepspeed_config

TOKENIZER = load_tokenizer()
TEXT = "Paris is in France. It has 90 million people. The Seine runs through it."
SPANS = [(0, 19), (20, 45), (46, 72)]


def pair(chosen_labels, rejected_labels):
    def side(labels):
        return Response(TEXT, tuple(Sentence(a, b, LabelMap().correctness(l), l) for (a, b), l in zip(SPANS, labels)))
    prompt = ({"role": "user", "content": "Tell me about Paris."},)
    return Pair("p", "q", "en", prompt, side(chosen_labels), side(rejected_labels))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    theirs = tiny_hf_llama(path, vocab_size=4096).double()
    return load_llama(path).double(), theirs


def tensors(encoded, ref):
    """The micro-batch of one pair, with float64 reference sums (the pipeline sends float32)."""
    mb = pack_pairs([encoded], 256, TOKENIZER.pad_token_id).micro_batches[0]
    inputs, labels = pipeline_tensors(mb, ref)
    return inputs, labels._replace(ref_logps=torch.as_tensor(ref, dtype=torch.float64))


def run_stage(model, encoded, ref, head="kernel"):
    """(loss, metrics) of the kernel head's objective on one pair."""
    inputs, labels = tensors(encoded, ref)
    objective = MaskDPOObjective(SequenceSums(head), beta=0.1)
    loss = objective(model(*inputs), tuple(labels))  # DeepSpeed hands the loss a plain tuple
    totals, bad = objective.take(torch.device("cpu"))
    assert bad == []
    return loss, step_metrics(totals)


def response_logps(theirs, side_ids, prompt_length):
    ids = torch.tensor(side_ids)
    logp = torch.log_softmax(theirs(ids[None]).logits[0, :-1], -1).gather(1, ids[1:, None]).squeeze(1)
    return logp[prompt_length - 1:]  # predictions of the response tokens (and the end-of-turn token)


def test_all_ones_masks_give_plain_dpo(models):
    ours, theirs = models
    encoded = encode_pair(pair(["ok"] * 3, ["contradictory"] * 3), TOKENIZER)  # the default counts the end of turn
    ref = torch.tensor([-300.0, -310.0])
    loss, metrics = run_stage(ours, encoded, ref)
    with torch.no_grad():
        chosen = response_logps(theirs, encoded.chosen.input_ids, encoded.chosen.prompt_length).sum()
        rejected = response_logps(theirs, encoded.rejected.input_ids, encoded.rejected.prompt_length).sum()
    expected = -F.logsigmoid(0.1 * ((chosen - ref[0]) - (rejected - ref[1])))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["kept_fraction/chosen"] == 1.0 == metrics["kept_fraction/rejected"]
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-5) and metrics["pairs"] == 1


def test_masking_a_sentence_removes_exactly_its_terms(models):
    ours, _ = models
    ref = torch.zeros(2)
    full = encode_pair(pair(["ok"] * 3, ["contradictory"] * 3), TOKENIZER)
    masked = encode_pair(pair(["ok", "contradictory", "ok"], ["contradictory"] * 3), TOKENIZER)
    _, m_full = run_stage(ours, full, ref)
    _, m_masked = run_stage(ours, masked, ref)
    assert m_full["rewards/rejected"] == pytest.approx(m_masked["rewards/rejected"], rel=1e-9)
    with torch.no_grad():
        mb = pack_pairs([full], 256, TOKENIZER.pad_token_id).micro_batches[0]
        inputs, _ = pipeline_tensors(mb, ref)
        logp = torch.log_softmax(ours(*inputs), -1)
    # The difference is exactly the masked sentence's weighted log-probs on the chosen side.
    dropped = [i for i in range(len(full.chosen.weights)) if full.chosen.weights[i] != masked.chosen.weights[i]]
    assert dropped and all(masked.chosen.weights[i] == 0 for i in dropped)
    expected = sum(logp[i - 1, full.chosen.input_ids[i]].item() for i in dropped)
    difference = (m_full["rewards/chosen"] - m_masked["rewards/chosen"]) / 0.1
    assert difference == pytest.approx(expected, rel=1e-9)


def test_step_zero_loss_is_ln2_with_reference_equal_to_policy(models):
    ours, _ = models
    encoded = encode_pair(pair(["ok", "unverifiable", "ok"], ["ok", "contradictory", "unverifiable"]), TOKENIZER)
    _, records = run_stage(ours, encoded, torch.zeros(2))
    policy = torch.tensor([records["rewards/chosen"], records["rewards/rejected"]], dtype=torch.float64) / 0.1
    loss, _ = run_stage(ours, encoded, policy)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-9)


def test_zero_stages_the_pipeline_refuses_fail_before_launch():
    assert check_parallelism(2, 1, 4) == 2
    with pytest.raises(ValueError, match="ZeRO stage 2 cannot be combined with a DeepSpeed pipeline"):
        check_parallelism(2, 2, 4)
    with pytest.raises(ValueError, match="the process count must be a multiple of 3"):
        check_parallelism(3, 1, 4)


def test_deepspeed_config_templates_merge_but_cannot_break_the_layout():
    import json
    from pathlib import Path

    template = json.loads((Path(__file__).resolve().parents[1] / "launch" / "ds_zero1_bf16.json").read_text())
    config = deepspeed_config(4, 2, overrides=template)
    assert config["train_batch_size"] == 8 and config["zero_optimization"]["overlap_comm"] is True
    assert config["bf16"] == {"enabled": True} and config["data_types"]["grad_accum_dtype"] == "fp32"
    with pytest.raises(ValueError, match="may not set train_batch_size"):
        deepspeed_config(4, 2, overrides={"train_batch_size": 3})
    with pytest.raises(ValueError, match="ZeRO stage 3 cannot be combined"):
        deepspeed_config(4, 2, overrides={"zero_optimization": {"stage": 3}})


@pytest.mark.parametrize("head", ["fused", "eager"])
def test_every_head_gives_the_kernel_heads_loss_and_gradients(models, head):
    ours, _ = models
    encoded = encode_pair(pair(["ok", "unverifiable", "ok"], ["ok", "contradictory", "unverifiable"]), TOKENIZER)
    (ids, pos, cu), labels = tensors(encoded, torch.tensor([-100.0, -120.0]))
    x = ours.embedding(ids)
    for layer in ours.layers:
        x = layer(x, pos, cu, 256)
    hidden = ours.head.norm(x).detach()
    weight = ours.head.lm_head.weight

    results = []
    for name in ("kernel", head):
        h = hidden.clone().requires_grad_(True)
        weight.grad = None
        objective = MaskDPOObjective(SequenceSums(name, weight if name == "fused" else None), beta=0.1)
        loss = objective(h if name == "fused" else h @ weight.t(), tuple(labels))
        loss.backward()
        results.append((loss.detach(), h.grad, weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_loss_scale_and_empty_slots():
    """A micro-batch's loss is the sum of its pairs' losses times loss_scale; empty slots add nothing,
    even when their sums are not finite."""
    gen = torch.Generator().manual_seed(0)
    n, vocab = 40, 11
    logits = torch.randn(n, vocab, dtype=torch.float64, generator=gen)
    seq_ids = torch.tensor([0] * 10 + [1] * 10 + [2] * 10 + [-1] * 10)
    labels = torch.where(seq_ids >= 0, torch.randint(0, vocab, (n,), generator=gen), -100)
    weights = (seq_ids >= 0).double()
    active = torch.nonzero(seq_ids >= 0).squeeze(1)
    batch = LossInputs(labels, weights, seq_ids, active, torch.tensor([5, 7]), torch.zeros(4), torch.zeros(4), active,
                       torch.tensor([-20.0, -25.0, -22.0, -21.0], dtype=torch.float64), torch.tensor([0.25]))
    objective = MaskDPOObjective(SequenceSums("eager"), beta=0.1)
    loss = objective(logits, tuple(batch))
    logp = torch.log_softmax(logits, -1).gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    sums = [logp[seq_ids == s].sum() for s in range(4)]
    expected = sum(-torch.nn.functional.logsigmoid(0.1 * ((sums[2 * p] - batch.ref_logps[2 * p])
                                                          - (sums[2 * p + 1] - batch.ref_logps[2 * p + 1])))
                   for p in range(2))
    assert loss.item() == pytest.approx(0.25 * expected.item(), rel=1e-12)
    # The second slot empty: its (finite) terms drop out of the loss and the metrics.
    half = batch._replace(pair_index=torch.tensor([5, -1]))
    objective(logits, tuple(half))
    totals, bad = objective.take(torch.device("cpu"))
    assert step_metrics(totals)["pairs"] == 3 and bad == []
    nan_logits = logits.clone()
    nan_logits[25] = float("nan")  # a row of the empty slot's rejected side
    assert torch.isfinite(objective(nan_logits, tuple(half)))
    nan_logits[5] = float("nan")  # a row of pair 5's chosen side
    assert not torch.isfinite(objective(nan_logits, tuple(half)))
    assert objective.take(torch.device("cpu"))[1] == [5]


def test_ipo_divides_by_the_sum_of_the_weights():
    from maskdpo.data import layout

    gen = torch.Generator().manual_seed(1)
    n, vocab = 20, 7
    logits = torch.randn(n, vocab, dtype=torch.float64, generator=gen)
    seq_ids = torch.tensor([0] * 10 + [1] * 10)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    weights = torch.rand(n, generator=gen, dtype=torch.float64) * (torch.arange(n) % 3 != 0)
    kept = torch.zeros(2, dtype=torch.float64).index_add(0, seq_ids, weights)
    batch = LossInputs(labels, weights, seq_ids, torch.nonzero(weights).squeeze(1), torch.tensor([0]), kept.float(),
                       torch.full((2,), 10.0), torch.arange(n), torch.tensor([-9.0, -11.0], dtype=torch.float64),
                       torch.tensor([1.0]))
    loss = MaskDPOObjective(SequenceSums("eager"), beta=0.5, loss_type="ipo")(logits, tuple(batch))
    logp = torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    sums = torch.zeros(2, dtype=torch.float64).index_add(0, seq_ids, weights * logp)
    chosen, rejected = layout.split_sides(sums - batch.ref_logps)
    z = chosen / kept[0] - rejected / kept[1]
    assert loss.item() == pytest.approx(((z - 1 / (2 * 0.5)) ** 2).item(), rel=1e-6)


@pytest.mark.parametrize("head", ["fused", "kernel", "eager"])
def test_the_reference_pass_scores_every_response_token_whatever_its_weight(models, head):
    """ReferenceTokenLogps against transformers in float64: every response target's log-prob, also
    those of masked sentences (weight 0), laid out by row."""
    from maskdpo.dpo.objective import ReferenceTokenLogps

    ours, theirs = models
    encoded = encode_pair(pair(["ok", "unverifiable", "ok"], ["ok", "contradictory", "unverifiable"]), TOKENIZER)
    mb = pack_pairs([encoded], 256, TOKENIZER.pad_token_id).micro_batches[0]
    (ids, pos, cu), labels = pipeline_tensors(mb)
    with torch.no_grad():
        x = ours.embedding(ids)
        for layer in ours.layers:
            x = layer(x, pos, cu, 256)
        hidden = ours.head.norm(x)
        weight = ours.head.lm_head.weight
        outputs = hidden if head == "fused" else hidden @ weight.t()
        by_row = ReferenceTokenLogps(SequenceSums(head, weight if head == "fused" else None))(outputs, tuple(labels))
        for s, side in enumerate((encoded.chosen, encoded.rejected)):
            rows = mb.response_rows[mb.seq_ids[mb.response_rows] == s]
            expected = response_logps(theirs, side.input_ids, side.prompt_length)
            assert (side.weights[side.prompt_length:] == 0).any()  # masked tokens are scored too
            torch.testing.assert_close(by_row[torch.from_numpy(rows)].double(), expected, rtol=1e-5, atol=1e-5)
