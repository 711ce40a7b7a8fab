"""What every GPU benchmark script shares: the no-CUDA exit, the environment record, the dated
results folder and interleaved timing."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cuda_missing(what: str) -> bool:
    """True (after saying so on stderr) when there is no CUDA device to time `what` on."""
    if torch.cuda.is_available():
        return False
    print(f"CUDA is not available: this benchmark times {what} and has nothing to measure here.", file=sys.stderr)
    return True


def results_dir(device_name: str, out_dir: Path | None = None) -> Path:
    """out_dir, or results/<date>-<device>/, created."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    path = out_dir or RESULTS / f"{dt.date.today().isoformat()}-{slug}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def interleaved_times(names, reps: int, warmup: int, time_one) -> tuple[dict, dict]:
    """Time every name in rounds, in a new shuffled order each round, so that clocks and heat hit all
    alike. time_one(name) runs one timed step and returns {kind: ms}; the first `warmup` rounds are
    dropped. Returns ({name: {kind: [ms, ...]}}, {name: "out of memory"} for the names that ran out)."""
    import random

    times = {name: {} for name in names}
    failed = {}
    for rep in range(warmup + reps):
        order = list(names)
        random.Random(rep).shuffle(order)
        for name in order:
            if name in failed:
                continue
            try:
                measured = time_one(name)
            except torch.OutOfMemoryError:
                failed[name] = "out of memory"
            if name in failed:  # outside the handler: its traceback no longer holds the step's tensors
                torch.cuda.empty_cache()
                continue
            if rep >= warmup:
                for kind, ms in measured.items():
                    times[name].setdefault(kind, []).append(ms)
    return times, failed


def environment() -> dict:
    """What a result needs beside it: the GPU, driver, CUDA and package versions, commit and date."""

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
        "gpu": torch.cuda.get_device_name(),
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
