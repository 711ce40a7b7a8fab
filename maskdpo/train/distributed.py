"""The process group: started once per process, torn down on every exit path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .launcher import free_port


def rank_zero() -> bool:
    """Rank 0 of the launch (or no launcher), known before the process group exists."""
    return os.environ.get("RANK", "0") == "0"


def keep_extensions_in_environment() -> None:
    """Build DeepSpeed's op once per environment, and only once.

    Torch builds C++ extensions into TORCH_EXTENSIONS_DIR, by default one folder per user shared by
    every environment of the same Python: environments with other torch or DeepSpeed versions then
    rebuild the op over each other's. Unless it is set, keep them inside this environment (as
    launch/env.sh does), when the environment is writable. And ninja decides what to rebuild from its
    log, whose command hashes differ between ninja versions: the environment's own ninja (pip's,
    beside this interpreter) must run every time, not whichever one PATH finds first (a system ninja
    in a shell without the environment activated, the environment's in one with it), or each switch
    rebuilds the op."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
    here = os.path.dirname(sys.executable)
    if os.path.isfile(os.path.join(here, "ninja")):
        os.environ["PATH"] = os.pathsep.join([here, *(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                       if p and p != here)])


def prepare_cpu_comm_op() -> None:
    """DeepSpeed builds a shared-memory C++ op for CPU collectives on its first init_distributed, once per
    environment (TORCH_EXTENSIONS_DIR). Say so when that build is due, instead of a silent pause; without
    a C++ compiler or ninja, leave the op out (collectives then run on plain gloo) and say what is
    missing, instead of an ImportError traceback from every rank."""
    import shutil

    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from torch.utils import cpp_extension

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    directory = Path(cpp_extension._get_build_directory(builder.name, verbose=False))
    if (directory / f"{builder.name}.so").is_file():
        return
    compiler = os.environ.get("CXX", "c++")
    missing = [what for what, found in ((f"a C++ compiler ({compiler})", shutil.which(compiler)),
                                         ("ninja (pip install ninja)", cpp_extension.is_ninja_available()))
               if not found]
    if missing:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False  # DeepSpeed then uses torch.distributed alone
        if rank_zero():
            print(f"note: {' and '.join(missing)} not found: DeepSpeed's shared-memory CPU collectives are not "
                  "built; gloo runs them (slower with many processes). Install g++ (apt install g++) to build "
                  "them once for this environment.", flush=True)
    elif rank_zero():
        print(f"building DeepSpeed's shared-memory CPU collectives, once for this environment, in {directory} "
              "(about 30 s)", flush=True)


def init_distributed() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA); a single process without a
    launcher becomes a group of one. Does nothing when the group already exists."""
    import contextlib
    import io

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
    else:
        keep_extensions_in_environment()
        prepare_cpu_comm_op()
    # DeepSpeed prints "... built successfully" from every rank each time it loads that op.
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def compute_device() -> torch.device:
    """This rank's device: where the model runs and where small tensors go for collectives (NCCL
    takes only CUDA tensors)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
