"""Checkpoints of the run: RUN_DIR/checkpoints/step-NNNNNNNN (DeepSpeed's per-rank files, the run's
fingerprint.json, and manifest.json) and a `latest` file naming the newest complete one.

Saving: every rank writes its files; then the files are checksummed (each rank hashes a share) and
rank 0 writes the manifest (name, size, sha256 of every file) last, then points `latest` at the
checkpoint by an atomic rename, then deletes what is beyond keep_last: complete checkpoints other
than the newest keep_last, and incomplete directories (no manifest) left by a crash. Rotation never
deletes what `latest` names. A crash at any point leaves `latest` on a complete checkpoint.

Resuming: the checkpoint `latest` names is verified against its manifest; a damaged one (a missing,
truncated or altered file) is reported naming the file, moved aside to damaged-step-NNNNNNNN, and
the newest intact checkpoint is used instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist

from ..digests import file_digest
from . import fingerprint

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only, permissions): one line that says why.
    collective: every rank raised it alike (else only the rank whose write failed)."""

    def __init__(self, message: str, collective: bool = False):
        super().__init__(message)
        self.collective = collective


def describe_write_error(error: BaseException, path: Path) -> str:
    """One line for a failed write: what libraries say ("basic_ios::clear: iostream error") does not
    name the cause."""
    import errno

    code = getattr(error, "errno", None)
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        free = None
    if code == errno.ENOSPC or (free is not None and free < (1 << 20)):
        return f"no space left on the device holding {path} ({free or 0} bytes free)"
    if code == errno.EROFS:
        return f"{path} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write {path}"
    return f"writing {path} failed: {' '.join(str(error).split())}"


def tag(step: int) -> str:
    return f"step-{step:08d}"


def step_dirs(directory: Path) -> list[Path]:
    """step-* checkpoint directories, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _hash_share(files: list[Path]) -> dict[str, dict]:
    """Size and sha256 of this rank's share of `files` (every world_size-th)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    return {f.name: {"size": f.stat().st_size, "sha256": file_digest(f)} for f in files[rank::world]}


def _gather(local: dict) -> dict:
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


class Checkpointer:
    def __init__(self, run_dir: Path, every: int, keep_last: int, fingerprint: dict | None = None):
        self.directory = Path(run_dir) / CHECKPOINTS
        self.every, self.keep_last, self.fingerprint = every, keep_last, fingerprint

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, or None."""
        file = self.directory / LATEST
        try:
            name = file.read_text().strip()
        except OSError:
            return None
        return self.directory / name if name else None

    def due(self, step: int, last_step: int) -> bool:
        return step % self.every == 0 or step == last_step

    def save(self, trainer, step: int) -> Path:
        """Every rank writes its part and hashes a share; rank 0 writes the manifest, moves `latest`
        and rotates."""
        path = self.directory / tag(step)
        self._check_space(trainer, path)
        try:
            trainer.save_checkpoint(self.directory, tag(step), client_state={"step": step}, save_latest=False)
        except (OSError, RuntimeError) as e:
            raise CheckpointWriteError(f"checkpoint {path.name} not saved: {describe_write_error(e, path)}") from e
        dist.barrier()
        if dist.get_rank() == 0 and self.fingerprint is not None:
            fingerprint.write(path / fingerprint.FILE, self.fingerprint)
        dist.barrier()
        files = sorted(f for f in path.iterdir() if f.is_file() and f.name != MANIFEST)
        manifest = _gather(_hash_share(files))
        if dist.get_rank() == 0:
            fingerprint.write(path / MANIFEST, {"step": step, "files": manifest})
            tmp = self.directory / (LATEST + ".tmp")
            tmp.write_text(tag(step))
            os.replace(tmp, self.directory / LATEST)
            self._rotate(path)
        dist.barrier()
        return path

    def _check_space(self, trainer, path: Path) -> float:
        """Refuse, on every rank alike, a save the disk cannot hold, before anything is written: a
        rank failing in the middle of DeepSpeed's save would leave the others waiting in it. Every
        rank enters the same two collectives whatever it sees on disk (on nodes that do not share a
        filesystem only rank 0's sees the previous manifest; a collective taken on one branch only
        would pair with another rank's next one and hang the job). Returns the bytes needed."""
        import torch

        from .distributed import compute_device

        self.directory.mkdir(parents=True, exist_ok=True)
        complete = [p for p in step_dirs(self.directory) if (p / MANIFEST).is_file()]
        previous = fingerprint.read(complete[-1] / MANIFEST) if complete else None
        previous_bytes = float(sum(f["size"] for f in previous["files"].values())) if previous else 0.0
        # the weights once, and fp32 weights and two Adam moments (12 bytes a parameter) sharded over
        # data-parallel replicas (ZeRO-1): every rank counts its stage's share
        share = sum(p.numel() * (p.element_size() + 12) for p in trainer.module.parameters())
        mine = torch.tensor([float(previous is not None), previous_bytes, share / trainer.layout.data_parallel],
                            dtype=torch.float64, device=compute_device())
        views = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(views, mine)
        views = torch.stack(views).cpu()
        # as large as the last checkpoint where any rank sees one, else the sum of the shares
        needed = views[:, 1].max().item() if views[:, 0].any() else views[:, 2].sum().item()
        free = shutil.disk_usage(self.directory).free
        short = torch.tensor([float(free < needed)], device=compute_device())
        dist.all_reduce(short, op=dist.ReduceOp.MAX)
        if short.item():
            raise CheckpointWriteError(f"checkpoint {path.name} not saved: no space left on the device holding "
                                       f"{self.directory}: it needs about {needed / 1e6:.1f} MB, {free / 1e6:.1f} MB "
                                       "are free", collective=True)
        return needed

    def _rotate(self, current: Path) -> None:
        complete = [p for p in step_dirs(self.directory) if (p / MANIFEST).is_file()]
        keep = set(complete[-self.keep_last:]) | {current}
        for old in step_dirs(self.directory):
            if old not in keep and old.name < current.name:
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def problem(path: Path, checked: dict | None = None) -> str | None:
        """What is wrong with checkpoint `path` (None when intact). `checked`: {file: {size, sha256}}
        as found now (computed here when not given)."""
        manifest = fingerprint.read(path / MANIFEST)
        if manifest is None or not isinstance(manifest.get("files"), dict):
            return f"{path / MANIFEST} is missing or unreadable (the checkpoint was not completed)"
        for name, expected in sorted(manifest["files"].items()):
            file = path / name
            if not file.is_file():
                return f"{file} is missing"
            size = file.stat().st_size
            if size != expected["size"]:
                return f"{file} has {size} bytes, the manifest says {expected['size']} (truncated or rewritten)"
            found = checked.get(name) if checked is not None else {"sha256": file_digest(file)}
            if found is None or found["sha256"] != expected["sha256"]:
                return f"{file} does not match its checksum (altered or corrupted)"
        return None

    def _verify(self, path: Path) -> str | None:
        """problem(path), with the hashing shared by all ranks; the same answer on every rank."""
        manifest = fingerprint.read(path / MANIFEST) or {}
        names = sorted(manifest.get("files", {})) if isinstance(manifest.get("files"), dict) else []
        present = [path / n for n in names if (path / n).is_file()]
        checked = _gather(_hash_share(present))
        answer = [self.problem(path, checked) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(answer, src=0)
        return answer[0]

    def resume(self, trainer, say=print) -> int:
        """Load the newest intact checkpoint, starting with the one `latest` names; return its step
        (0 when there is none). Damaged checkpoints are reported and moved aside."""
        latest = self.latest()
        if latest is None:
            return 0
        candidates = [latest] + [p for p in reversed(step_dirs(self.directory)) if p != latest]
        for path in candidates:
            problem = self._verify(path) if path.is_dir() else f"{path} is missing"
            if problem is None:
                if path != latest:
                    say(f"warning: resuming from {path}, the newest intact checkpoint")
                    if dist.get_rank() == 0:
                        tmp = self.directory / (LATEST + ".tmp")
                        tmp.write_text(path.name)
                        os.replace(tmp, self.directory / LATEST)
                return int(trainer.load_checkpoint(self.directory, path.name)["step"])
            say(f"warning: checkpoint {path.name} is damaged: {problem}")
            if dist.get_rank() == 0 and path.is_dir():
                path.rename(self.directory / f"damaged-{path.name}")
            dist.barrier()
        raise FileNotFoundError(f"no intact checkpoint in {self.directory}: every one is damaged (moved aside "
                                "as damaged-step-*); start again in a new logging.run_dir")
