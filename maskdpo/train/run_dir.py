"""What a run directory holds and whether a new run may use it.

    RUN_DIR/run.json          the fingerprint of the run using it, and its state: running, complete
    RUN_DIR/config.yaml       the configuration, written when a run starts with it
    RUN_DIR/checkpoints/      step-NNNNNNNN/ (each with fingerprint.json), latest
    RUN_DIR/metrics.jsonl     one line per step of the state the checkpoints hold
    RUN_DIR/.lock             held by the run using the directory (run_lock.py)

`check_run_directory` runs before any process starts: a directory whose checkpoints were written
with another fingerprint is refused (exit 2) listing the differences; a complete run with the same
fingerprint is "already complete" (exit 0, no work).
"""

from __future__ import annotations

from pathlib import Path

from . import fingerprint as fp
from .checkpointer import Checkpointer, step_dirs
from .exit_codes import EXIT_CONFIG, EXIT_FINISHED


class RunRefused(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def check_run_directory(config, world_size: int) -> dict:
    """The run's fingerprint, once the directory is known to be free of another configuration.
    Raises RunRefused (with the exit code) when the run must not start."""
    run_dir = Path(config.logging.run_dir)
    current = fp.fingerprint(config, world_size)
    latest = Checkpointer(run_dir, 1, 1).latest()
    if latest is not None:
        # Every checkpoint of a directory has the same fingerprint; a damaged latest one may have lost its copy.
        stored = next((s for s in (fp.read(p / fp.FILE) for p in [latest, *reversed(step_dirs(latest.parent))])
                       if s is not None), None)
        if stored is None:
            raise RunRefused(f"{latest.parent} holds checkpoints without a readable {fp.FILE} (written by an older "
                             "maskdpo, or damaged): this run cannot tell whether its configuration matches; use "
                             "another logging.run_dir", EXIT_CONFIG)
        changed = fp.differences(stored, current)
        if changed:
            raise RunRefused(
                f"{run_dir} holds a run with another configuration; it would be mixed into this one:\n  "
                + "\n  ".join(changed)
                + f"\nUse another logging.run_dir, or start a new run from this one's weights with --model.path "
                  f"{run_dir / 'hf'} (a finished run's export; for one that has not finished, `maskdpo export "
                  f"{run_dir} -o DIR` writes it from the newest checkpoint: --model.path DIR).",
                EXIT_CONFIG)
    state = fp.read(run_dir / fp.RUN_FILE) or {}
    if state.get("state") == "complete" and state.get("fingerprint") == current and latest is not None:
        raise RunRefused(f"{run_dir}: already complete ({state.get('steps')} steps); the policy is in "
                         f"{run_dir / 'hf'}. Nothing to do.", EXIT_FINISHED)
    return current


def mark(run_dir: Path, fingerprint: dict, state: str, **extra) -> None:
    """Record the run's state in RUN_DIR/run.json (rank 0)."""
    fp.write(Path(run_dir) / fp.RUN_FILE, {"fingerprint": fingerprint, "state": state, **extra})
