"""Qwen2, Qwen3 and Mistral checkpoints in the DeepSpeed pipeline (CPU, gloo, 2 processes) against the
Mask-DPO step written from the formula in float64 with transformers' own class of each family
(tests/test_pipeline.py's oracle): at P = 2 (Qwen3's tied embedding on both stages) and at T = 2
(Qwen2's biases split with their rows, Qwen3's q/k norms replicated), the gradient norm clipping
would use, a bitwise resume, and the export read back by transformers as the same family."""

import json

import pytest
import torch
import transformers
from pipeline_data import micro_batches
from pipeline_launch import FAMILY_NAMES
from test_pipeline import check_step, merged, oracle_grad_norm, oracle_step
from test_tensor_parallel import exported


@pytest.fixture(scope="module")
def oracles(pipeline_models):
    """family -> (HF directory, the transformers model, the float64 oracle's step over every pair)."""
    mbs, _ = micro_batches()
    pairs = [int(i) for mb in mbs for i in mb.pair_index if i >= 0]
    return {f: (*pipeline_models[f], oracle_step(pipeline_models[f][0], pairs)) for f in FAMILY_NAMES}


@pytest.fixture(scope="module")
def out(pipeline_launch):
    return pipeline_launch("families")


def check_against_oracle(result, params, family, oracles):
    path, model, (loss, reference, updated) = oracles[family]
    tied = model.config.tie_word_embeddings
    # The step's loss is log 2 up to float32 rounding: the policy's sums (about -800 each, summed per
    # sequence on the last stage) against the reference's (per token, summed on the CPU): each
    # sum's rounding is around 1e-4, times beta = 0.1, over two differences.
    assert result["metrics"]["loss"] == pytest.approx(loss, abs=1e-5)
    start = model.state_dict()
    check_step(result, params, reference, updated, start, tied=tied, loss_atol=1e-5)
    # clipping's norm: every parameter once (shards, replicated norms, a tied weight on two stages)
    assert result["metrics"]["grad_norm"] == pytest.approx(oracle_grad_norm(start, updated, tied), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_pipeline_step_of_each_family_is_the_oracles(out, oracles, family):
    result = json.loads((out / f"family-pp2-{family}.json").read_text())
    check_against_oracle(result, merged(out, f"family-pp2-{family}"), family, oracles)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_tensor_parallel_step_of_each_family_is_the_oracles_and_resumes_bitwise(out, oracles, family):
    scenario = f"family-tp2-{family}"
    result = json.loads((out / f"{scenario}.json").read_text())
    check_against_oracle(result, exported(out / f"{scenario}-hf"), family, oracles)
    assert result["resumed"] == result["straight"]
    straight, resumed = exported(out / f"{scenario}-straight"), exported(out / f"{scenario}-resumed")
    assert set(straight) == set(resumed)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # the export after three steps: transformers reads it as the family's own class, every tensor ours
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out / f"{scenario}-straight"))
    assert type(theirs) is type(oracles[family][1])
    for name, tensor in theirs.state_dict().items():
        if name != "lm_head.weight" or not theirs.config.tie_word_embeddings:
            assert torch.equal(tensor, straight[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_tensor_parallel_checkpoint_is_put_back_together_by_maskdpo_export(out, oracles, family):
    """`maskdpo export`'s reading of a checkpoint (one file per layer and tensor rank at T = 2): the
    step-1 checkpoint gives the tensors the engine's own export gathered after that step."""
    from maskdpo.model.hf import load_config
    from maskdpo.train.export import checkpoint_tensors

    scenario = f"family-tp2-{family}"
    files = list((out / f"{scenario}-ckpt" / "step1").glob("layer_*-model_01-model_states.pt"))
    assert files  # a second tensor rank's files: what the export has to join
    ours = checkpoint_tensors(out / f"{scenario}-ckpt" / "step1", load_config(oracles[family][0]))
    gathered = exported(out / f"{scenario}-hf")
    assert set(ours) == set(gathered)
    for name in gathered:
        assert torch.equal(ours[name], gathered[name]), name
