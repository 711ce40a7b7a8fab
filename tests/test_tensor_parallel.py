"""Tensor parallelism inside the DeepSpeed pipeline (CPU, gloo, 2 and 4 processes) against the
Mask-DPO step written from the formula in float64 with transformers (tests/test_pipeline.py's
oracle), through the HF export (which gathers the shards)."""

import json
from pathlib import Path

import pytest
import torch
from model_helpers import FP32_FIRST_LOSS_ATOL
from pipeline_data import micro_batches
from safetensors.torch import load_file
from test_pipeline import check_step, oracle_grad_norm, oracle_step

from maskdpo.model.hf import load_config
from maskdpo.model.shards import rank_shapes, shard_range
from maskdpo.train.engine import check_parallelism


@pytest.fixture(scope="module")
def models(pipeline_models):
    """untied, and the tied model with a vocabulary T = 2 does not divide (pipeline_launch.py)."""
    return {"untied": pipeline_models["untied"], "tied": pipeline_models["odd"]}


@pytest.fixture(scope="module")
def launch(pipeline_launch):
    """launch(processes) -> the results of the session's launch with that many processes; the kernels
    run their PyTorch path (the 4-process runs under the interpreter would be too slow)."""
    return lambda processes: pipeline_launch("four" if processes == 4 else "tensor-parallel")


def exported(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("processes,scenario,model", [
    (2, "tp2-pp1", "untied"),
    (2, "tp2-pp1-tied", "tied"),
    (4, "tp2-pp2", "untied"),
    (4, "tp2-pp2-tied", "tied"),
])
def test_tensor_parallel_step_matches_plain_pytorch(launch, models, processes, scenario, model):
    """T = 2 (DP = 1) and T = 2 x P = 2; tied embeddings with a vocabulary T does not divide (at
    T = 2 x P = 2 the tied weight lives on both stages, sharded): the same loss, reference sums,
    updated parameters and gradient norm as float64 transformers, after the export has gathered the
    shards into standard tensors."""
    out = launch(processes)
    mbs, _ = micro_batches()
    pairs = [int(i) for mb in mbs for i in mb.pair_index if i >= 0]
    loss, reference, updated = oracle_step(models[model][0], pairs)
    result = json.loads((out / f"{scenario}.json").read_text())
    assert result["metrics"]["loss"] == pytest.approx(loss, abs=FP32_FIRST_LOSS_ATOL)
    assert result["metrics"]["pairs"] == len(pairs)  # the last stage's tensor ranks counted once
    start = models[model][1].state_dict()
    check_step(result, exported(out / f"{scenario}-hf"), reference, updated, start, tied=model == "tied")
    # DeepSpeed's gradient norm (what clipping uses) counts every parameter once: sharded ones on
    # their rank, replicated ones once, a tied embedding once. SGD(lr=1): gradient = start - updated.
    assert result["metrics"]["grad_norm"] == pytest.approx(oracle_grad_norm(start, updated, model == "tied"), rel=1e-4)
    assert result["metrics"]["replicated_equal"]
    # Every rank held exactly its shard (maskdpo.model.shards' rule), not the whole tensors.
    config = load_config(models[model][0])
    for tp_rank, _stage, shapes in result["shapes"]:
        expected = rank_shapes(config, 2, tp_rank)
        for name, shape in shapes.items():
            if name.endswith("self_attn.q_proj.weight"):
                assert tuple(shape) == expected.layer["self_attn.q_proj.weight"]
            if name.endswith("embed_tokens.weight"):
                start, stop = shard_range(config.vocab_size, 2, tp_rank)
                assert tuple(shape) == (stop - start, config.hidden_size)
    if scenario == "tp2-pp2":  # the same step with T = 1 (P = 2, D = 2) exports the same model
        single = exported(out / "tp1-pp2-hf")
        ours = exported(out / f"{scenario}-hf")
        assert set(single) == set(ours)
        for name in single:
            torch.testing.assert_close(ours[name], single[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_bf16_tensor_parallel_step_matches_the_float64_oracle(launch, models):
    """T = 2 in bf16 with ZeRO-1 (DeepSpeed's BF16_Optimizer, not the fp32 path): at bf16's precision
    the oracle's step, and a gradient norm that counts the shards and replicated weights once."""
    from test_pipeline import check_bf16_step

    out = launch(2)
    mbs, _ = micro_batches()
    pairs = [int(i) for mb in mbs for i in mb.pair_index if i >= 0]
    _, reference, updated = oracle_step(models["untied"][0], pairs)
    result = json.loads((out / "tp2-pp1-bf16.json").read_text())
    start = models["untied"][1].state_dict()
    params = exported(out / "tp2-pp1-bf16-hf")
    assert {t.dtype for t in params.values()} == {torch.bfloat16}
    check_bf16_step(result, params, reference, updated, start)
    assert result["metrics"]["grad_norm"] == pytest.approx(oracle_grad_norm(start, updated), rel=3e-2)
    assert result["metrics"]["replicated_equal"]


@pytest.mark.slow
def test_tensor_parallel_resume_is_bitwise(launch):
    out = launch(2)
    result = json.loads((out / "tp2-pp1-resume.json").read_text())
    assert result["resumed"] == result["straight"]
    straight, resumed = exported(out / "tp2-pp1-resume-straight"), exported(out / "tp2-pp1-resume-resumed")
    assert set(straight) == set(resumed)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # The checkpoint holds one model file per tensor rank (DeepSpeed's mp_rank_XX layout).
    assert len(list((out / "tp2-pp1-resume-ckpt" / "step1").glob("mp_rank_0*_model_states.pt"))) == 2


@pytest.mark.slow
def test_a_layer_takes_two_all_reduces_forward_and_two_backward(launch):
    """Megatron's count: forward, the o and down projections' partial sums; backward, one for the
    attention input (q, k and v's gradient parts summed on the rank first) and one for the MLP input
    (gate and up), not one per projection. The sharded layer still equals the whole one (float64),
    its biases split with their rows (Qwen2) and its replicated q/k norms (Qwen3) included."""
    results = json.loads((launch(2) / "tp-collectives.json").read_text())
    for family, extra_reduces, extra_params in (("llama", 0, 0), ("qwen2", 0, 3), ("qwen3", 2, 2)):
        result = results[family]
        assert result["forward"] == {"all_reduce": 2}, family
        # Qwen3's q and k norms: each rank's heads give part of the shared weight's gradient, summed
        assert result["backward"] == {"all_reduce": 2 + extra_reduces}, family
        assert len(result["errors"]) == 2 + 9 + extra_params, family  # output, input, every parameter
        for what, error in result["errors"].items():
            assert error < 1e-12, (family, what)


def test_a_world_size_that_does_not_factor_is_refused():
    assert check_parallelism(2, 1, 8, tensor_parallel=2) == 2
    with pytest.raises(ValueError, match="6 processes cannot form 4 tensor-parallel x 1 pipeline ranks"):
        check_parallelism(1, 1, 6, tensor_parallel=4)
    with pytest.raises(ValueError, match="tensor_parallel must be at least 1"):
        check_parallelism(1, 1, 2, tensor_parallel=0)
