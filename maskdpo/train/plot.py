"""Plots of a run's metrics.jsonl: loss, reward accuracy and reward margin over steps."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (("loss", "loss"), ("rewards/accuracy", "reward accuracy"), ("rewards/margin", "reward margin"))


def read_metrics(run_dir: str | Path) -> list[dict]:
    file = Path(run_dir) / "metrics.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no metrics (is {run_dir} a run directory?)")
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path) -> Path:
    """Write RUN_DIR/metrics.png and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (key, title) in zip(axes, PANELS):
        ax.plot(steps, [r.get(key, float("nan")) for r in records], marker="." if len(steps) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
