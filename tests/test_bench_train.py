"""The training benchmark: its workload is packed the way training packs, and it needs CUDA."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train  # noqa: E402


def test_synthetic_micro_batch_fills_the_budget_with_masked_responses():
    mb = bench_train.synthetic_micro_batch(pairs=2, seq=64, vocab=50, seed=0)
    assert mb.input_ids.shape == (256,) and mb.cu_seqlens.tolist()[:5] == [0, 64, 128, 192, 256]
    assert np.diff(mb.cu_seqlens).max() == 64  # attention's bound is one side
    counted = mb.seq_ids >= 0
    assert np.all(mb.labels[counted] == mb.input_ids[1:][counted[:-1]])  # labels are the next tokens
    assert 0.2 < mb.weights[counted].mean() < 0.8 and np.all(mb.weights[~counted] == 0)
    # 30% prompt: the response targets of each side are the remaining 45 tokens.
    assert mb.response_tokens.tolist() == [45.0] * 4


@pytest.mark.slow  # a subprocess that imports torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_exits_with_status_2_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "CUDA is not available" in run.stderr


def test_a_dropped_trainer_is_freed_and_the_next_one_trains(monkeypatch):
    """Between heads nothing of the previous trainer stays allocated (DeepSpeed's pipeline engine keeps
    autograd graphs whose hooks point back at it: without drop_trainer it outlives gc), the process
    group is gone, and a new trainer builds and trains in the same process."""
    import gc
    import weakref

    import torch.distributed as dist

    from maskdpo.model.architecture import Architecture
    from maskdpo.train.engine import PipelineTrainer
    from maskdpo.train.launcher import free_port

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())), ("RANK", "0"),
                       ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(key, value)
    config = Architecture(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2)

    def train_once():
        trainer = PipelineTrainer(config, pipeline_stages=1, gradient_accumulation_steps=1, bf16=True, head="eager",
                                  optimizer_factory=lambda p: torch.optim.AdamW(p, lr=1e-3), max_seqlen=32)
        loss = trainer.train_step([bench_train.synthetic_micro_batch(2, 32, 64, 0)], -50 * torch.rand(2, 2))["loss"]
        module = weakref.ref(trainer.module)
        bench_train.drop_trainer(trainer)
        return loss, module

    def parameters():
        return [t for t in gc.get_objects() if type(t) is torch.nn.Parameter]

    # Parameters that other tests' fixtures hold in this process (xdist runs several files in one
    # worker) are not the trainer's: only those made since must be gone.
    gc.collect()
    held_before = {id(t) for t in parameters()}
    try:
        first, module = train_once()
        bench_train.release()
        gc.collect()
        assert module() is None and not dist.is_initialized()
        assert not [t for t in parameters() if id(t) not in held_before]
        second, _ = train_once()
        assert second == first  # the same seed, model and batch: a clean second start
    finally:
        bench_train.release()
