"""The run's metrics: metrics.jsonl (one line per step, rank 0), TensorBoard events when installed,
and the progress bar. A resumed run first drops the lines of steps it will redo."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD = ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected", "lr",
               "kept_fraction/chosen", "kept_fraction/rejected", "tokens_per_s")


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, total_steps: int, initial_step: int):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.file = None
        self.writer = None
        self.bar = None
        if not enabled:
            return
        from tqdm import tqdm

        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("warning: logging.tensorboard is on but tensorboard is not installed "
                      "(pip install tensorboard); no events written")
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    @staticmethod
    def trim(run_dir: Path, last_step: int) -> int:
        """Keep only the records of steps up to `last_step` (the ones a resumed run will not redo);
        return how many were dropped. A line cut short by a kill is dropped too."""
        path = Path(run_dir) / METRICS_FILE
        if not path.exists():
            return 0
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
                kept.append(line)
            else:
                dropped += 1
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)
        return dropped

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer:
            for key in TENSORBOARD:
                if key in record:
                    self.writer.add_scalar(key, record[key], record["step"])
        self.bar.set_postfix(epoch=record["epoch"], loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracy']:.2f}",
                             margin=f"{record['rewards/margin']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        self.bar.update(1)

    def close(self) -> None:
        for thing in (self.bar, self.file, self.writer):
            if thing is not None:
                thing.close()
        self.bar = self.file = self.writer = None
