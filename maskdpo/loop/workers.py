"""The worker threads of a data-loop job: daemon threads, so that requests abandoned by a stop keep
nobody waiting.

concurrent.futures.ThreadPoolExecutor's threads are joined when the interpreter exits, so a job
stopped by Ctrl-C with requests in flight (each may wait minutes for its timeout, with retries)
would hold the process of a caller of `maskdpo.cli.main()` open until they end. These threads are
daemons: what stops the job also lets its process exit. Only the caller's thread writes results,
so an abandoned request never reaches the output.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future


class DaemonPool:
    """submit(fn, *args) -> Future, run by at most `size` daemon threads."""

    def __init__(self, size: int):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"maskdpo-job-{i}")
                         for i in range(max(1, size))]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():  # cancelled while queued
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(e)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel what has not started; with wait, also wait for what is running."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
