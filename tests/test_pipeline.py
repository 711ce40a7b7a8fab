"""The DeepSpeed pipeline on CPU (gloo, 2 processes) against the Mask-DPO step written from the formula
in float64 with transformers."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from model_helpers import FP32_FIRST_LOSS_ATOL
from pipeline_data import PACKING_PAIRS, encoded_pairs, micro_batches

from maskdpo.model.hf import load_llama

BETA = 0.1


@pytest.fixture(scope="module")
def models(pipeline_models):
    return pipeline_models


@pytest.fixture(scope="module")
def launch(pipeline_launch):
    """launch(group) -> the results folder of the session's one launch of that group (pipeline_launch.py)."""
    return pipeline_launch


def pair_sums(model, side_pairs):
    """The float64 masked log-prob sums (chosen, rejected) of each encoded pair, from transformers."""
    out = []
    for pair in side_pairs:
        sums = []
        for side in (pair.chosen, pair.rejected):
            ids = torch.tensor(side.input_ids)
            logp = torch.log_softmax(model(ids[None]).logits[0, :-1], -1).gather(1, ids[1:, None]).squeeze(1)
            sums.append((torch.tensor(side.weights[1:], dtype=torch.float64) * logp).sum())
        out.append(torch.stack(sums))
    return out


def oracle_step(hf_model, pair_indices):
    """The Mask-DPO step written from the formula, in float64 with transformers: reference = the
    starting policy, loss = mean over the step's pairs of -log sigmoid(beta * (r_w - r_l)), one
    SGD(lr=1) update. Returns (loss, {pair: reference sums}, updated parameters)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_model)).double()
    encoded = encoded_pairs()
    policy = pair_sums(model, [encoded[i] for i in pair_indices])
    reference = {i: p.detach() for i, p in zip(pair_indices, policy)}
    terms = [-F.logsigmoid(BETA * ((p[0] - reference[i][0]) - (p[1] - reference[i][1])))
             for i, p in zip(pair_indices, policy)]
    loss = torch.stack(terms).mean()
    loss.backward()
    updated = {n: (q - q.grad).detach() for n, q in model.named_parameters()}
    return loss.item(), reference, updated


def merged(out, name):
    tensors = {}
    for file in sorted(out.glob(f"{name}-stage*.pt")):
        tensors.update(torch.load(file))
    return tensors


def check_step(result, params, reference, updated, start_state, tied=False, loss_atol=FP32_FIRST_LOSS_ATOL):
    """A pipeline step's loss, reference table and updated parameters against the float64 oracle."""
    assert result["metrics"]["loss"] == pytest.approx(math.log(2), abs=loss_atol)  # reference = starting policy
    for i, expected in reference.items():
        torch.testing.assert_close(torch.tensor(result["reference"][i], dtype=torch.float64), expected,
                                   rtol=2e-6, atol=1e-3)
    hf_names = {n for n in updated if not (n == "lm_head.weight" and tied)}
    assert set(params) == hf_names
    for name in hf_names:
        torch.testing.assert_close(params[name].double(), updated[name], rtol=1e-4, atol=2e-6, msg=name)
    moved = max((params[n].double() - start_state[n].double()).abs().max().item() for n in hf_names)
    assert moved > 1e-3  # the step really changed the weights


def oracle_grad_norm(start, updated, tied=False):
    """The whole model's gradient norm from an SGD(lr=1) step of the oracle (gradient = start - updated),
    every parameter once (a tied LM head is the embedding)."""
    names = [n for n in updated if not (n == "lm_head.weight" and tied)]
    return torch.sqrt(sum(((start[n].double() - updated[n]) ** 2).sum() for n in names)).item()


BF16_HALF_ULP = 2.0 ** -8  # bf16's eps is 2**-7: rounding moves a value by at most half of it, relatively


def check_bf16_step(result, params, reference, updated, start_state, tied=False):
    """A bf16 pipeline step (bf16 weights and compute, fp32 master weights and accumulation) against
    the float64 oracle, at bf16's precision: the loss and the reference sums by relative error;
    every weight within two roundings of the oracle's update plus 5 % of its largest change; and
    where the change is far above the weight's rounding, the change applied equal to the oracle's
    gradient (SGD lr = 1) within 5 % (a lost or doubled gradient part is 40-100 %)."""
    assert result["metrics"]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # reference = starting policy
    for i, expected in reference.items():
        torch.testing.assert_close(torch.tensor(result["reference"][i], dtype=torch.float64), expected, rtol=3e-2, atol=0.0)
    hf_names = {n for n in updated if not (n == "lm_head.weight" and tied)}
    assert set(params) == hf_names
    resolved = 0
    for name in hf_names:
        ours, oracle, start = params[name].double(), updated[name], start_state[name].double()
        change, expected = start - ours, start - oracle
        bound = 2 * BF16_HALF_ULP * oracle.abs() + 0.05 * expected.abs().max()
        assert ((ours - oracle).abs() <= bound).all(), (name, ((ours - oracle).abs() - bound).max().item())
        if expected.norm() > 20 * BF16_HALF_ULP * start.norm():
            resolved += 1
            error = ((change - expected).norm() / expected.norm()).item()
            assert error < 0.05, (name, error)
    assert resolved >= len(hf_names) // 3  # enough weights moved past their rounding to tell


@pytest.mark.slow
@pytest.mark.parametrize("scenario,model", [("grads-pp2-tied-bf16", "tied")])
def test_bf16_pipeline_step_with_tied_embeddings_matches_the_float64_oracle(launch, models, scenario, model):
    """bf16 with ZeRO-1 is DeepSpeed's BF16_Optimizer (fp32 masters), not the fp32 path: the tied
    embedding, on the first stage and as the last stage's LM head, gets both stages' gradient."""
    out = launch("pytorch")
    mbs, _ = micro_batches()
    pairs = [int(i) for mb in mbs for i in mb.pair_index if i >= 0]
    _, reference, updated = oracle_step(models[model][0], pairs)
    result = json.loads((out / f"{scenario}.json").read_text())
    stages = [torch.load(f) for f in sorted(out.glob(f"{scenario}-stage*.pt"))]
    assert len(stages) == 2 and torch.equal(stages[0]["model.embed_tokens.weight"], stages[1]["model.embed_tokens.weight"])
    assert {t.dtype for stage in stages for t in stage.values()} == {torch.bfloat16}
    check_bf16_step(result, merged(out, scenario), reference, updated, models[model][1].state_dict(), tied=True)


@pytest.mark.slow
@pytest.mark.parametrize("scenario,model", [("grads-pp2", "untied"), ("grads-pp1", "untied"), ("grads-pp2-tied", "tied")])
def test_pipeline_matches_plain_pytorch(launch, models, scenario, model):
    """PP=2 (GAS 4, fused head), DP=2 (PP=1, GAS 2, kernel head), both with the Triton kernels
    interpreted, and tied embeddings across the stages (the PyTorch path: the tie is the pipeline's,
    the head's kernel is grads-pp2's): the same loss, reference and update as float64 transformers."""
    out = launch("pytorch" if model == "tied" else "interpreted")
    mbs, _ = micro_batches()
    pairs = [int(i) for mb in mbs for i in mb.pair_index if i >= 0]
    loss, reference, updated = oracle_step(models[model][0], pairs)
    result = json.loads((out / f"{scenario}.json").read_text())
    assert result["metrics"]["loss"] == pytest.approx(loss, abs=FP32_FIRST_LOSS_ATOL)
    assert result["metrics"]["pairs"] == len(pairs)
    start = models[model][1].state_dict()
    check_step(result, merged(out, scenario), reference, updated, start, tied=model == "tied")
    if model == "tied":  # clipping's norm counts the tied weight once, though two stages hold it
        assert result["metrics"]["grad_norm"] == pytest.approx(oracle_grad_norm(start, updated, tied=True), rel=1e-4)


@pytest.fixture(scope="module")
def packing_oracle(models):
    return oracle_step(models["untied"][0], list(range(PACKING_PAIRS)))


@pytest.mark.slow
@pytest.mark.parametrize("pipeline_stages", [2, 1])
@pytest.mark.parametrize("pairs_per_micro_batch", [1, 2, 4])
def test_the_step_does_not_depend_on_packing(launch, models, packing_oracle, pairs_per_micro_batch, pipeline_stages):
    """The same 8 pairs packed 1, 2 or 4 to a micro-batch (micro-batches of 3, 4 and 1 pairs), with
    PP=2 or DP=2: the loss is the mean over the 8 pairs and the update is the oracle's."""
    out = launch("pytorch")
    scenario = f"packing-{pairs_per_micro_batch}-pp{pipeline_stages}"
    result = json.loads((out / f"{scenario}.json").read_text())
    assert sum(result["pairs_per_micro_batch"]) == PACKING_PAIRS
    assert max(result["pairs_per_micro_batch"]) == pairs_per_micro_batch
    loss, reference, updated = packing_oracle
    assert result["metrics"]["loss"] == pytest.approx(loss, abs=FP32_FIRST_LOSS_ATOL)
    assert result["metrics"]["pairs"] == PACKING_PAIRS
    check_step(result, merged(out, scenario), reference, updated, models["untied"][1].state_dict())


@pytest.mark.slow
def test_checkpoint_resume_continues_identically(launch):
    out = launch("pytorch")
    result = json.loads((out / "resume.json").read_text())
    assert result["client_state"] == 1
    assert result["resumed"] == result["straight"]
    straight, resumed = merged(out, "straight"), merged(out, "resumed")
    assert set(straight) == set(resumed) and all(torch.equal(straight[n], resumed[n]) for n in straight)


@pytest.mark.slow
def test_hf_export_loads_in_transformers_with_the_trained_weights(launch):
    out = launch("pytorch")
    trained = merged(out, "resumed")
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(out / "export")).eval()
    for name, tensor in exported.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)
    ours = load_llama(out / "export")
    ids = torch.randint(0, 4096, (20,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = exported(ids[None]).logits[0]
        got = ours(ids, torch.arange(20), torch.tensor([0, 20], dtype=torch.int32))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_training_on_bundled_pairs_lowers_the_loss(launch):
    out = launch("pytorch")
    history = json.loads((out / "train.json").read_text())
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=FP32_FIRST_LOSS_ATOL)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["rewards/accuracy"] > 0.9 > history[0]["rewards/accuracy"]
    assert history[-1]["rewards/margin"] > 0


@pytest.mark.slow
def test_bf16_with_activation_checkpointing_trains(launch):
    out = launch("interpreted")
    result = json.loads((out / "bf16-checkpointing.json").read_text())
    losses = [h["loss"] for h in result["history"]]
    assert result["dtypes"] == ["torch.bfloat16"] and len(losses) == 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # the reference pass saw the same bf16 model
    # both steps train on the same micro-batches: after one update they score better
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0]
