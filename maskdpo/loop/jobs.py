"""Resumable, concurrent jobs that append one JSON line per finished item.

A rerun skips items already in the output: a last line cut short by a kill is dropped and redone,
so a killed run loses at most the items in flight and never duplicates one. Records of an earlier
run with other settings (another model, temperature, ...) are refused rather than mixed in.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..data.errors import RecordError
from .workers import DaemonPool

# After this many failures in a row (each already retried), the server is taken to be down.
CONSECUTIVE_FAILURES_TO_STOP = 8


@dataclass
class JobReport:
    total: int = 0
    already_done: int = 0
    done: int = 0
    failed: list = field(default_factory=list)  # (key, error)
    stopped: str | None = None  # why the run ended early (interrupted, server failing)

    def summary(self, what: str) -> str:
        text = f"{what}: {self.done} new, {self.already_done} already done, {len(self.failed)} failed of {self.total}"
        if self.failed:
            text += f" (first failure: {self.failed[0][0]}: {self.failed[0][1]})"
        if self.stopped:
            text += f"; stopped early: {self.stopped}"
        if self.failed or self.stopped:
            text += "; rerun to continue"
        return text


def done_records(output: Path, key, mismatch=None) -> dict:
    """key -> record for the complete lines of `output`.

    Only the last line may be incomplete (no newline: cut short by a kill); it is removed. Any other
    bad line, or a record whose settings differ from this run's (mismatch(record) returns why), is a
    RecordError naming the file and line.
    """
    if not output.exists():
        return {}
    raw = output.read_bytes()
    lines = raw.split(b"\n")
    records = {}
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            item_key = key(record)
        except (ValueError, KeyError, TypeError) as e:  # ValueError covers JSON and UTF-8 errors
            if last:  # cut short by a kill: drop it, the item is redone
                with open(output, "r+b") as f:
                    f.truncate(len(raw) - len(line))
                break
            raise RecordError(f"not a complete record ({type(e).__name__}: {e}); fix or remove the line",
                              path=str(output), line=number) from None
        if last:  # complete but unterminated: terminate it so the next record starts on its own line
            with open(output, "ab") as f:
                f.write(b"\n")
        reason = mismatch(record) if mismatch else None
        if reason:
            raise RecordError(f"written by a run with other settings ({reason}); use another output file or "
                              f"remove it", path=str(output), line=number)
        records[item_key] = record
    return records


def run_jobs(items: list, work, output: str | Path, key, concurrency: int = 8, desc: str = "",
             mismatch=None) -> JobReport:
    """Run work(item) -> record (a dict) for each item whose key(item) is not yet in `output`.

    Ctrl-C stops at once (finished items are kept; requests in flight are abandoned, and neither this
    call nor the process waits for them); so do CONSECUTIVE_FAILURES_TO_STOP failures in a row, which
    mean the server is down rather than a request being unlucky.
    """
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    finished = done_records(output, key, mismatch)
    todo, seen = [], set(finished)
    for item in items:
        if key(item) not in seen:  # also drops duplicate items
            seen.add(key(item))
            todo.append(item)
    report = JobReport(total=len({key(i) for i in items}), already_done=len(finished))
    pool = DaemonPool(min(max(1, concurrency), max(1, len(todo))))
    streak = 0
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with open(output, "a", encoding="utf-8") as out, \
                tqdm(total=len(todo), desc=desc, unit="item", disable=None) as bar:
            pending = {pool.submit(work, item): item for item in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = pending.pop(future)
                    try:
                        record = future.result()
                    except Exception as e:  # noqa: BLE001 - counted and reported; redone on a rerun
                        report.failed.append((key(item), f"{type(e).__name__}: {e}"))
                        streak += 1
                    else:
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                        out.flush()
                        report.done += 1
                        streak = 0
                    bar.update(1)
                if streak >= CONSECUTIVE_FAILURES_TO_STOP:
                    report.stopped = f"{streak} items failed in a row (is the server up?)"
                    break
    except KeyboardInterrupt:
        report.stopped = "interrupted"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while the report is written: no traceback
    finally:
        pool.shutdown(wait=report.stopped is None)  # a stop abandons the requests in flight
        if report.stopped == "interrupted":
            signal.signal(signal.SIGINT, sigint)
    return report


def settings_mismatch(field: str, settings: dict, key, inputs: dict, input_field: str, source: str):
    """The `mismatch` rule of run_jobs for a job whose records store their settings under `field`
    and copy an input under `input_field`: a record written with other settings, or from another
    version of its input (inputs: key -> value), is refused, never mixed in."""
    def mismatch(record):
        if record.get(field) != settings:
            return f"{field} {record.get(field)} then, {settings} now"
        if key(record) in inputs and record.get(input_field) != inputs[key(record)]:
            return f"the {input_field} differs from {source}"
        return None
    return mismatch


class Counter:
    """A thread-safe counter."""

    def __init__(self):
        self.value, self._lock = 0, threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n
