"""One torchrun launch of tests/pipeline_worker.py per group of scenarios that need the same
processes, shared by test_pipeline.py and test_tensor_parallel.py (each launch pays about 10 s of
imports per process, and each scenario builds its own engine, so grouping changes no result).

    interpreted      2 processes, the Triton kernels under the interpreter (slow: only what must be:
                     the fused head at P = 2, the kernel head at D = 2, bf16; the tied run's head is
                     the same kernel on another weight, so it runs on the PyTorch path)
    pytorch          2 processes, the kernels' PyTorch path
    tensor-parallel  2 processes, T = 2, the PyTorch path
    four             4 processes (T = 2 x P = 2, untied and tied, and T = 1 x P = 2 x D = 2), the PyTorch path
    families         2 processes, Qwen2, Qwen3 and Mistral at P = 2 and at T = 2 (with resume), the PyTorch path
"""

import os
import subprocess
import sys
from pathlib import Path

from model_helpers import tiny_hf_family, tiny_hf_llama

from maskdpo.train.launcher import free_port

TESTS = Path(__file__).resolve().parent
ODD_VOCAB = 4093  # not divisible by 2; holds every token id of the bundled pairs (< 4092)

FAMILY_NAMES = ("qwen2", "qwen3", "mistral")  # test_families_pipeline.py's, with model_helpers.FAMILIES' checkpoints

GROUPS = {  # test_pipeline.py's two, then test_tensor_parallel.py's two (xdist --dist loadfile keeps a file on one worker)
    "interpreted": (2, True, ("grads-pp2", "grads-pp1", "bf16-checkpointing")),
    "pytorch": (2, False, ("grads-pp2-tied", "grads-pp2-tied-bf16", "packing-1-pp2", "packing-2-pp2", "packing-4-pp2",
                           "packing-1-pp1", "packing-2-pp1", "packing-4-pp1", "resume", "train")),
    "tensor-parallel": (2, False, ("tp2-pp1", "tp2-pp1-tied", "tp2-pp1-bf16", "tp2-pp1-resume", "tp-collectives")),
    "four": (4, False, ("tp2-pp2", "tp1-pp2", "tp2-pp2-tied")),
    "families": (2, False, tuple(f"family-{layout}-{family}" for family in FAMILY_NAMES for layout in ("pp2", "tp2"))),
}


def build_models(root: Path) -> dict:
    """name -> (HF directory, the transformers model): untied GQA with rope scaling, tied MHA, a tied
    model whose vocabulary 2 tensor ranks do not divide, and one of each other family."""
    models = {"untied": (root / "hf", tiny_hf_llama(root / "hf", "gqa-rope-scaling", vocab_size=4096)),
              "tied": (root / "hf-tied", tiny_hf_llama(root / "hf-tied", "tied-mha", vocab_size=4096, seed=1)),
              "odd": (root / "hf-odd", tiny_hf_llama(root / "hf-odd", "tied-mha", vocab_size=ODD_VOCAB, seed=2))}
    for seed, family in enumerate(FAMILY_NAMES, start=3):
        models[family] = (root / family, tiny_hf_family(root / family, family, seed=seed, vocab_size=4096))
    return models


def launcher(models: dict, tmp_path_factory):
    """launch(group) runs the group's scenarios once per session and returns their results folder."""
    done = {}

    def launch(group: str) -> Path:
        if group not in done:
            processes, interpret, scenarios = GROUPS[group]
            out = tmp_path_factory.mktemp(f"pipeline-{group}")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1" if interpret else "0",
                   "PYTHONPATH": str(TESTS)}
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                       str(processes), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                       str(TESTS / "pipeline_worker.py"), "--hf", str(models["untied"][0]),
                       "--hf-tied", str(models["tied"][0]), "--hf-odd", str(models["odd"][0]), "--out", str(out),
                       "--family", *(f"{family}={models[family][0]}" for family in FAMILY_NAMES),
                       "--scenarios", *scenarios]
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
            done[group] = out
        return done[group]
    return launch
