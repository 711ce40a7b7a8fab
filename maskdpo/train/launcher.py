"""Starting the worker processes of a CPU run ourselves (gloo), so that a user needs no launcher."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(world: int, argv: list[str]) -> int:
    """CPU (or a quick try): start `world` processes ourselves, with gloo; the user needs no launcher.

    SIGINT/SIGTERM are passed to every worker, which saves a checkpoint and stops at the end of its
    step. If a worker fails, the others are stopped rather than left waiting in a collective.
    """
    port = str(free_port())
    workers = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        workers.append(subprocess.Popen([sys.executable, "-m", "maskdpo.train", *argv], env=env))

    def forward(signum, frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while any(w.poll() is None for w in workers):
        if any(w.poll() not in (None, 0) for w in workers):
            time.sleep(5)  # let the others report, then stop them
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            break
        time.sleep(0.2)
    return max(abs(w.wait()) for w in workers)
