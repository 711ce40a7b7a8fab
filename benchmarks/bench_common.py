"""What every GPU benchmark script shares: the no-CUDA exit, the environment record, the dated
results folder, interleaved timing, and memory measured one provider at a time with out-of-memory
reported as that provider's error."""

from __future__ import annotations

import datetime as dt
import functools
import gc
import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cuda_missing(what: str, cuda=torch.cuda) -> bool:
    """True (after saying so on stderr) when there is no CUDA device to time `what` on. cuda: the
    torch.cuda module, or a stand-in in tests."""
    if cuda.is_available():
        return False
    print(f"CUDA is not available: this benchmark times {what} and has nothing to measure here.", file=sys.stderr)
    return True


def results_dir(device_name: str, out_dir: Path | None = None) -> Path:
    """out_dir, or results/<date>-<device>/, created."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    path = out_dir or RESULTS / f"{dt.date.today().isoformat()}-{slug}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_memory() -> None:
    """Return what the last provider left to the driver and restart the peak count, so that the next
    measurement sees only its own memory. gc first: autograd graphs and engines hold reference
    cycles, whose tensors the caching allocator cannot release until they are collected."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def out_of_memory(fn):
    """(fn(), None), or (None, "out of memory") when fn ran out of CUDA memory. The memory is freed
    after the handler has finished: until then the traceback holds the failed step's tensors."""
    try:
        return fn(), None
    except torch.OutOfMemoryError:
        pass
    free_memory()
    return None, "out of memory"


def interleaved_times(names, reps: int, warmup: int, time_one) -> tuple[dict, dict]:
    """Time every name in rounds, in a new shuffled order each round, so that clocks and heat hit all
    alike. time_one(name) runs one timed step and returns {kind: ms}; the first `warmup` rounds are
    dropped. Returns ({name: {kind: [ms, ...]}}, {name: "out of memory"} for the names that ran out).
    The cache is not emptied between providers here: the next timed step would pay for cudaMalloc."""
    import random

    times = {name: {} for name in names}
    failed = {}
    for rep in range(warmup + reps):
        order = list(names)
        random.Random(rep).shuffle(order)
        for name in order:
            if name in failed:
                continue
            measured, error = out_of_memory(functools.partial(time_one, name))
            if error:
                failed[name] = error
            elif rep >= warmup:
                for kind, ms in measured.items():
                    times[name].setdefault(kind, []).append(ms)
    return times, failed


def one_at_a_time(names, measure_one) -> tuple[dict, dict]:
    """measure_one(name) -> a result, for each name in turn, with memory freed and the peak count reset
    before each (memory measurements must not see the previous provider's leftovers). Returns
    ({name: result}, {name: "out of memory"}): running out of memory is that name's error."""
    results, failed = {}, {}
    for name in names:
        free_memory()
        result, error = out_of_memory(functools.partial(measure_one, name))
        if error:
            failed[name] = error
        else:
            results[name] = result
    free_memory()
    return results, failed


def environment(cuda=torch.cuda) -> dict:
    """What a result needs beside it: the GPU, driver, CUDA and package versions, commit and date.
    cuda: the torch.cuda module, or a stand-in in tests."""

    def version(distribution):  # from the installed metadata: not every package has __version__
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        driver = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "gpu": cuda.get_device_name(),
        "driver": driver,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": version("triton"),
        "liger_kernel": version("liger-kernel"),
        "cut_cross_entropy": version("cut-cross-entropy"),
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
