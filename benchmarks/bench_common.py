"""What every GPU benchmark script shares: the no-CUDA exit and the dated results folder."""

from __future__ import annotations

import datetime as dt
import re
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
