"""Checkpoints of the run: RUN_DIR/checkpoints/step-NNNNNNNN (DeepSpeed's per-rank files) and a
`latest` file naming the newest complete one.

A checkpoint is written in full, then `latest` is pointed at it by an atomic rename, then the
checkpoints beyond keep_last are deleted: a crash mid-save leaves `latest` on the previous complete
checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def tag(step: int) -> str:
    return f"step-{step:08d}"


class Checkpointer:
    def __init__(self, run_dir: Path, every: int, keep_last: int):
        self.directory = Path(run_dir) / CHECKPOINTS
        self.every, self.keep_last = every, keep_last

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        file = self.directory / LATEST
        return self.directory / file.read_text().strip() if file.exists() else None

    def due(self, step: int, last_step: int) -> bool:
        return step % self.every == 0 or step == last_step

    def save(self, trainer, step: int) -> Path:
        """Every rank writes its part; rank 0 then moves `latest` and deletes old checkpoints."""
        trainer.save_checkpoint(self.directory, tag(step), client_state={"step": step}, save_latest=False)
        dist.barrier()
        if dist.get_rank() == 0:
            tmp = self.directory / (LATEST + ".tmp")
            tmp.write_text(tag(step))
            os.replace(tmp, self.directory / LATEST)
            tags = sorted(p.name for p in self.directory.iterdir() if p.is_dir() and p.name.startswith("step-"))
            for old in tags[:-self.keep_last]:
                shutil.rmtree(self.directory / old, ignore_errors=True)
        dist.barrier()
        return self.directory / tag(step)

    def resume(self, trainer) -> int:
        """Load the latest checkpoint into the engine; return its step (0 when there is none)."""
        latest = self.latest()
        if latest is None:
            return 0
        return int(trainer.load_checkpoint(self.directory, latest.name)["step"])
