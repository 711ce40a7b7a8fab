"""The last stage's loss in one process: all-ones masks are plain DPO; masks only drop their own terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskdpo.data import LabelMap, Pair, Response, Sentence, encode_pair, load_tokenizer, pack_pairs
from maskdpo.engine import check_parallelism, deepspeed_config, micro_batch_tensors
from maskdpo.model.hf import load_llama
from maskdpo.stage_loss import StageLoss

from model_helpers import tiny_hf_llama

TOKENIZER = load_tokenizer()
TEXT = "Paris is in France. It has 90 million people. The Seine runs through it."
SPANS = [(0, 19), (20, 45), (46, 72)]


def pair(chosen_labels, rejected_labels):
    def side(labels):
        return Response(TEXT, tuple(Sentence(a, b, LabelMap().correctness(l), l) for (a, b), l in zip(SPANS, labels)))
    return Pair("p", "q", "en", ({"role": "user", "content": "Tell me about Paris."},), side(chosen_labels), side(rejected_labels))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    theirs = tiny_hf_llama(path, vocab_size=4096).double()
    return load_llama(path).double(), theirs


def run_stage(model, encoded, ref):
    mb = pack_pairs([encoded], 256, TOKENIZER.pad_token_id).micro_batches[0]
    (ids, pos, cu), labels = micro_batch_tensors(mb, ref)
    logits = model(ids, pos, cu)
    loss_fn = StageLoss(beta=0.1)
    return loss_fn(logits, (*labels[:3], labels[3].double(), *labels[4:])), loss_fn.records[-1]


def response_logps(theirs, side_ids, prompt_length):
    ids = torch.tensor(side_ids)
    logp = torch.log_softmax(theirs(ids[None]).logits[0, :-1], -1).gather(1, ids[1:, None]).squeeze(1)
    return logp[prompt_length - 1:]  # predictions of the response tokens (and the end-of-turn token)


def test_all_ones_masks_give_plain_dpo(models):
    ours, theirs = models
    encoded = encode_pair(pair(["ok"] * 3, ["contradictory"] * 3), TOKENIZER, count_eot=True)
    ref = torch.tensor([-300.0, -310.0])
    loss, metrics = run_stage(ours, encoded, ref)
    with torch.no_grad():
        chosen = response_logps(theirs, encoded.chosen.input_ids, encoded.chosen.prompt_length).sum()
        rejected = response_logps(theirs, encoded.rejected.input_ids, encoded.rejected.prompt_length).sum()
    expected = -F.logsigmoid(0.1 * ((chosen - ref[0]) - (rejected - ref[1])))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["kept_fraction/chosen"].item() == 1.0 == metrics["kept_fraction/rejected"].item()


def test_masking_a_sentence_removes_exactly_its_terms(models):
    ours, _ = models
    ref = torch.zeros(2)
    full = encode_pair(pair(["ok"] * 3, ["contradictory"] * 3), TOKENIZER)
    masked = encode_pair(pair(["ok", "contradictory", "ok"], ["contradictory"] * 3), TOKENIZER)
    _, m_full = run_stage(ours, full, ref)
    _, m_masked = run_stage(ours, masked, ref)
    assert m_full["rewards/rejected"].item() == pytest.approx(m_masked["rewards/rejected"].item(), rel=1e-9)
    with torch.no_grad():
        mb = pack_pairs([full], 256, TOKENIZER.pad_token_id).micro_batches[0]
        (ids, pos, cu), _ = micro_batch_tensors(mb, ref)
        logp = torch.log_softmax(ours(ids, pos, cu), -1)
    # The difference is exactly the masked sentence's weighted log-probs on the chosen side.
    dropped = [i for i in range(len(full.chosen.weights)) if full.chosen.weights[i] != masked.chosen.weights[i]]
    assert dropped and all(masked.chosen.weights[i] == 0 for i in dropped)
    expected = sum(logp[i - 1, full.chosen.input_ids[i]].item() for i in dropped)
    difference = (m_full["rewards/chosen"] - m_masked["rewards/chosen"]).item() / 0.1
    assert difference == pytest.approx(expected, rel=1e-9)


def test_step_zero_loss_is_ln2_with_reference_equal_to_policy(models):
    ours, _ = models
    encoded = encode_pair(pair(["ok", "unverifiable", "ok"], ["ok", "contradictory", "unverifiable"]), TOKENIZER)
    _, records = run_stage(ours, encoded, torch.zeros(2))
    policy = torch.tensor([records["rewards/chosen"].item(), records["rewards/rejected"].item()]) / 0.1
    loss, _ = run_stage(ours, encoded, policy.double())
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # reference sums travel as float32


def test_zero_stages_the_pipeline_refuses_fail_before_launch():
    assert check_parallelism(2, 1, 4) == 2
    with pytest.raises(ValueError, match="ZeRO stage 2 cannot be combined with a DeepSpeed pipeline"):
        check_parallelism(2, 2, 4)
    with pytest.raises(ValueError, match="must be a multiple of pipeline_stages"):
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


def test_fused_head_gives_the_same_loss_and_gradients(models):
    ours, _ = models
    encoded = encode_pair(pair(["ok", "unverifiable", "ok"], ["ok", "contradictory", "unverifiable"]), TOKENIZER)
    mb = pack_pairs([encoded], 256, TOKENIZER.pad_token_id).micro_batches[0]
    (ids, pos, cu), labels = micro_batch_tensors(mb, torch.tensor([-100.0, -120.0]))
    labels = (*labels[:3], labels[3].double(), *labels[4:])
    x = ours.embedding(ids)
    for layer in ours.layers:
        x = layer(x, pos, cu, 256)
    hidden = ours.head.norm(x).detach()
    weight = ours.head.lm_head.weight

    results = []
    for fused in (False, True):
        h = hidden.clone().requires_grad_(True)
        weight.grad = None
        loss_fn = StageLoss(beta=0.1)
        if fused:
            loss_fn.head_weight = weight
            loss = loss_fn(h, labels)
        else:
            loss = loss_fn(h @ weight.t(), labels)
        loss.backward()
        results.append((loss.detach(), h.grad, weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
