"""Plots of a run's metrics.jsonl over steps: loss, reward accuracy, reward margin, the chosen and
rejected rewards, and the learning rate, titled with the run directory's name and its model."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .metrics import METRICS_FILE

# (panel title, ((metric key, legend label or None), ...)): a panel with labels gets a legend.
PANELS = (
    ("loss", (("loss", None),)),
    ("reward accuracy", (("rewards/accuracy", None),)),
    ("reward margin", (("rewards/margin", None),)),
    ("rewards", (("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"))),
    ("learning rate", (("lr", None),)),
)
COLUMNS = 3
RANDOM_INIT = "random init"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The step records of RUN_DIR/metrics.jsonl, in file order.

    FileNotFoundError when the file is missing; ValueError, naming the file (and line), when a line
    is not a JSON object or when no line holds a step: there is nothing to plot."""
    file = Path(run_dir) / METRICS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file, nothing to plot (is {run_dir} a run directory?)")
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{number}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{file}:{number}: not a JSON object")
        if isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
    if not records:
        raise ValueError(f"{file}: no steps yet, nothing to plot")
    return records


def model_name(run_dir: str | Path) -> str:
    """`model.path` of RUN_DIR/config.yaml; "random init" when the file is absent or the path unset."""
    import yaml

    file = Path(run_dir) / "config.yaml"
    if not file.is_file():
        return RANDOM_INIT
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "model unknown (config.yaml unreadable)"
    model = config.get("model") if isinstance(config, dict) else None
    path = model.get("path") if isinstance(model, dict) else None
    return str(path) if path not in (None, "") else RANDOM_INIT


def run_title(run_dir: str | Path) -> str:
    return f"{Path(run_dir).resolve().name}  (model: {model_name(run_dir)})"


def _value(record: dict, key: str) -> float:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def metrics_figure(records: list[dict], title: str):
    """The matplotlib Figure (Agg canvas) of these step records: one panel per PANELS entry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = -(-len(PANELS) // COLUMNS)
    fig = Figure(figsize=(4 * COLUMNS, 3.2 * rows + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, COLUMNS, squeeze=False).ravel()
    steps = [r["step"] for r in records]
    marker = "." if len(steps) < 50 else None
    for ax, (panel, lines) in zip(axes, PANELS):
        for key, label in lines:
            ax.plot(steps, [_value(r, key) for r in records], marker=marker, label=label)
        if any(label for _, label in lines):
            ax.legend()
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(PANELS):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path) -> Path:
    """Write RUN_DIR/metrics.png and return its path. Raises FileNotFoundError without metrics.jsonl
    and ValueError when it holds no step or a damaged line (before anything is drawn)."""
    records = read_metrics(run_dir)
    fig = metrics_figure(records, run_title(run_dir))
    out = Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=100)
    return out
