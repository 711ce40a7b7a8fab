"""Which accelerator DeepSpeed uses, named before it is imported."""

from __future__ import annotations

import os
import sys


def name_cpu_accelerator() -> None:
    """On a machine without CUDA, tell DeepSpeed it is the CPU: detecting that itself, it warns on
    every import ("unable to detect" a GPU), once per process and rank. Set DS_ACCELERATOR to choose."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and "deepspeed" not in sys.modules and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
