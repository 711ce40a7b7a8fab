"""The process group: started once per process, torn down on every exit path."""

from __future__ import annotations

import os

import torch

from .launcher import free_port


def init_distributed() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA); a single process without a
    launcher becomes a group of one. Does nothing when the group already exists."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def compute_device() -> torch.device:
    """This rank's device: where the model runs and where small tensors go for collectives (NCCL
    takes only CUDA tensors)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
