"""Starting the worker processes of a CPU run ourselves (gloo), so that a user needs no launcher, and
making sure no worker outlives its launcher."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

PARENT_ENV = "MASKDPO_LAUNCHER_PID"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send `signum` to this process when its parent (our launcher, torchrun's or
    deepspeed's agent) dies, so that no worker trains on as an orphan. SIGTERM: the worker stops
    the way a user's Ctrl-C stops it, saving a checkpoint at the end of its step. Elsewhere than
    Linux this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signum, 0, 0, 0)
    # The parent may have died before the call took effect: we would have been re-parented already.
    expected = os.environ.get(PARENT_ENV)
    if expected is not None and os.getppid() != int(expected):
        os.kill(os.getpid(), signum)


def launch_local(world: int, argv: list[str], lock_fd: int | None = None) -> int:
    """CPU (or a quick try): start `world` processes ourselves, with gloo; the user needs no launcher.

    SIGINT/SIGTERM are passed to every worker, which saves a checkpoint and stops at the end of its
    step. If a worker fails, the others are stopped rather than left waiting in a collective. The
    run directory's lock (an open file) is passed to the workers, so it stays held while any of them
    lives. Returns the run's exit code (maskdpo.train.exit_codes).
    """
    from .exit_codes import EXIT_STOPPED
    from .run_lock import ENV as LOCK_ENV

    port = str(free_port())
    workers = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), PARENT_ENV: str(os.getpid())}
        if lock_fd is not None:
            env[LOCK_ENV] = str(lock_fd)
        workers.append(subprocess.Popen([sys.executable, "-m", "maskdpo.train", *argv], env=env,
                                        pass_fds=() if lock_fd is None else (lock_fd,)))

    def forward(signum, frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while any(w.poll() is None for w in workers):
        if any(w.poll() not in (None, 0, EXIT_STOPPED) for w in workers):
            time.sleep(5)  # let the others report, then stop them
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            break
        time.sleep(0.2)
    codes = [w.wait() for w in workers]
    failed = [c for c in codes if c not in (0, EXIT_STOPPED)]
    if failed:  # a worker's own failure code; one killed by a signal (negative) is a failure, 1
        return failed[0] if failed[0] > 0 else 1
    return EXIT_STOPPED if EXIT_STOPPED in codes else 0
