"""One run per run directory: an exclusive lock on RUN_DIR/.lock held for the run's life.

The lock is an flock on an open file, so it goes away with the last process holding the file open:
a run killed with SIGKILL leaves no stale lock, and a lock file whose flock is free is recognised as
left by a dead run. The CPU launcher takes it and passes the open file to its workers, so the
directory stays locked until every worker has exited, even when the launcher itself is killed. The
file records the holder (PID, host, start time) for the message a second run gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK = ".lock"
ENV = "MASKDPO_RUN_LOCK_FD"  # set for workers whose launcher holds the lock for them


class RunDirectoryBusy(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.previous: dict | None = None  # the holder the file named, when it was left by a dead run

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunDirectoryBusy(f"{self.path.parent} is in use by another run: {describe(holder)}; wait for it "
                                   "to end, stop it, or choose another logging.run_dir") from None
        self.previous = _read(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Close this process's descriptor. Not LOCK_UN: workers given the same open file keep the
        lock until the last of them exits, even when their launcher leaves first."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"
