"""`maskdpo train --model.path` on a Qwen3 checkpoint with its ChatML tokenizer, as a user runs it:
the real launcher, 2 processes at T = 2, the bundled pairs; the run's export and `maskdpo export`
read back by transformers as Qwen3. And a Mistral window shorter than data.max_length refused
before any process starts, naming both numbers."""

import json

import pytest
import torch
import transformers
from model_helpers import tiny_hf_family
from test_chatml import QWEN3, chatml_tokenizer
from train_helpers import metrics, train


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """A tiny Qwen3 (q/k norms, head_dim 24, tied embeddings) whose directory holds its ChatML
    tokenizer, as a downloaded Qwen3 directory does."""
    path = tmp_path_factory.mktemp("qwen3")
    tokenizer = chatml_tokenizer(path, QWEN3)
    tiny_hf_family(path, "qwen3", vocab_size=len(tokenizer))
    return path, tokenizer


@pytest.mark.slow
def test_a_qwen3_checkpoint_trains_and_exports_as_qwen3(qwen3, tmp_path):
    from maskdpo.cli import main as cli_main

    path, tokenizer = qwen3
    # T = 2 (P = 1): the q/k norms replicated, the tied embedding split by vocabulary; `maskdpo export`
    # puts the checkpoint's per-tensor-rank files back together
    result = train(tmp_path / "run", tmp_path / "cache", "--model.path", str(path), "--train.epochs", "1",
                   "--parallel.tensor_parallel", "2", "--parallel.pipeline_stages", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = metrics(tmp_path / "run")
    assert len(history) >= 3 and history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # reference = start
    assert "'<|im_end|>'" in result.stdout + result.stderr  # the end of turn the data side found
    assert cli_main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "export")]) == 0
    start = transformers.AutoModelForCausalLM.from_pretrained(str(path)).state_dict()
    for hf in (tmp_path / "run" / "hf", tmp_path / "export"):
        config = json.loads((hf / "config.json").read_text())
        assert (config["model_type"], config["architectures"], config["head_dim"]) == ("qwen3", ["Qwen3ForCausalLM"], 24)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf))
        assert type(model) is transformers.Qwen3ForCausalLM and model.config.tie_word_embeddings
        state = model.state_dict()
        assert set(state) == set(start)
        assert all(not torch.equal(state[n], start[n]) for n in state if "q_norm" in n or "k_norm" in n)  # trained
        assert transformers.AutoTokenizer.from_pretrained(str(hf)).chat_template == tokenizer.chat_template
    run_hf, export = (transformers.AutoModelForCausalLM.from_pretrained(str(d)).state_dict()
                      for d in (tmp_path / "run" / "hf", tmp_path / "export"))
    assert all(torch.equal(run_hf[n], export[n]) for n in run_hf)


@pytest.mark.slow
def test_a_mistral_window_shorter_than_max_length_is_refused_before_launch(tmp_path):
    tiny_hf_family(tmp_path / "mistral", "mistral", vocab_size=4096, sliding_window=128)
    result = train(tmp_path / "run", tmp_path / "cache", "--model.path", str(tmp_path / "mistral"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "data.max_length (256) is longer than the model's sliding_window (128)" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
