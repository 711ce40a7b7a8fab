"""Resumable, concurrent jobs that append one JSON line per finished item.

A rerun skips items already in the output (a line cut short by a kill is dropped and redone), so a
killed run loses at most the items in flight and never duplicates one.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JobReport:
    total: int = 0
    already_done: int = 0
    done: int = 0
    failed: list = field(default_factory=list)  # (key, error)

    def summary(self, what: str) -> str:
        text = f"{what}: {self.done} new, {self.already_done} already done, {len(self.failed)} failed of {self.total}"
        if self.failed:
            text += f" (first failure: {self.failed[0][0]}: {self.failed[0][1]}); rerun to retry them"
        return text


def done_keys(output: Path, key) -> set:
    """Keys of complete lines; a last line cut short by a kill is removed from the file."""
    if not output.exists():
        return set()
    raw = output.read_bytes()
    lines = raw.split(b"\n")
    keys, good = set(), 0
    for line in lines:
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            keys.add(key(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError):
            break
        good += len(line) + 1
    if good < len(raw):
        with open(output, "r+b") as f:
            f.truncate(good)
    return keys


def run_jobs(items: list, work, output: str | Path, key, concurrency: int = 8, desc: str = "") -> JobReport:
    """Run work(item) -> record (a dict) for each item whose key(item) is not yet in `output`."""
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    finished = done_keys(output, key)
    todo = [item for item in items if key(item) not in finished]
    report = JobReport(total=len(items), already_done=len(items) - len(todo))
    lock = threading.Lock()
    with open(output, "a", encoding="utf-8") as out, ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(todo), desc=desc, unit="item", disable=None) as bar:
        futures = {pool.submit(work, item): item for item in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                record = future.result()
            except Exception as e:  # noqa: BLE001 - counted and reported; the item is redone on rerun
                report.failed.append((key(item), f"{type(e).__name__}: {e}"))
            else:
                with lock:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                report.done += 1
            bar.update(1)
    return report
