"""Reading JSONL records with exact errors, strict or skipping (and recording) bad records."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from .errors import RecordError


@dataclass
class ReadReport:
    """What a read saw: records read and kept, and skipped ones counted by field at fault."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    rejects_path: str | None = None
    invalid: int = 0  # skipped records that were invalid (strict mode would have stopped at them)

    def summary(self) -> str:
        text = f"{self.path}: {self.read} records read, {self.kept} kept"
        if self.skipped:
            reasons = ", ".join(f"{n} at {reason}" for reason, n in self.skipped.most_common())
            text += f", {sum(self.skipped.values())} skipped ({reasons}); written to {self.rejects_path}"
        return text


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines as bytes, split on \n only (a raw \r inside a record is not a line break)."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line


def _parse_line(parse, number: int, raw: bytes):
    """(number, text, parse(obj) or the RecordError it raised). Any other failure of `parse` (a chat
    template that refuses a prompt, say) becomes a RecordError too, so it is located and skippable."""
    text = raw.decode("utf-8", errors="replace")
    try:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"invalid UTF-8 at byte {e.start} of the line") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"malformed JSON: {e.msg} at column {e.colno}") from None
        where = _lone_surrogate(obj)
        if where is not None:
            raise RecordError("holds a lone surrogate escape (\\ud800-\\udfff alone is not text)", where or None)
        return number, text, parse(obj, number)
    except RecordError as e:
        return number, text, e
    except Exception as e:  # noqa: BLE001 - reported with file and line, never swallowed
        return number, text, RecordError(f"{type(e).__name__}: {e}")


def _lone_surrogate(obj, where: str = "") -> str | None:
    """The field path of the first string holding a lone surrogate (JSON's "\\ud800" escapes decode
    to one; tokenizers then fail with an unlocated TypeError), or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = _lone_surrogate(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found is not None:
            return found
    return None


def _parse_chunk(parse, chunk):
    return [_parse_line(parse, number, line) for number, line in chunk]


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parsed(path: Path, parse, workers: int):
    """(number, line, value or RecordError) for each record, in file order."""
    if workers <= 1:
        for number, line in _lines(path):
            yield _parse_line(parse, number, line)
        return
    # spawn, not fork: the parent may hold threads (tokenizers, torch) that fork would copy mid-state.
    with get_context("spawn").Pool(workers) as pool:
        for results in pool.imap(functools.partial(_parse_chunk, parse), _chunks(_lines(path), 256)):
            yield from results


def read_records(
    path: str | Path,
    parse: Callable[[object, int], object],
    *,
    strict: bool = True,
    rejects_path: str | Path | None = None,
    report: ReadReport | None = None,
    workers: int = 1,
) -> Iterator[tuple[int, object]]:
    """Yield (line number, parse(json_object, line_number)) for every non-blank line of `path`.

    strict: the first bad record raises RecordError naming file, line and field. Otherwise bad
    records are skipped. Skipped records (and `skippable` ones, in either mode) are counted in
    `report` and written with their reason to `rejects_path` (default: `<path>.rejects.jsonl`),
    so nothing is dropped silently. workers > 1 parses in that many processes (`parse` must then
    be picklable: a module-level function or a functools.partial of one); order is kept.
    """
    path = Path(path)
    report = report if report is not None else ReadReport(str(path))
    rejects_file = Path(rejects_path or path.with_name(path.name + ".rejects.jsonl"))
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a JSONL file")
    rejects_file.unlink(missing_ok=True)  # a clean run leaves no stale rejects behind
    rejects = None
    try:
        for number, line, value in _parsed(path, parse, workers):
            report.read += 1
            if isinstance(value, RecordError):
                error = value.located(str(path), number)
                if strict and not error.skippable:
                    raise error
                if rejects is None:
                    report.rejects_path = str(rejects_file)
                    rejects = open(rejects_file, "w", encoding="utf-8")
                report.skipped[re.sub(r"\[-?\d+\]", "[]", error.field or "record")] += 1
                if not error.skippable:
                    report.invalid += 1
                rejects.write(json.dumps({"file": str(path), "line": number, "field": error.field,
                                          "error": error.message, "skippable": error.skippable,
                                          "record": line.rstrip("\r\n")}, ensure_ascii=False) + "\n")
                continue
            report.kept += 1
            yield number, value
    finally:
        if rejects is not None:
            rejects.close()


def count_records(path: str | Path) -> int:
    """Non-blank lines of a JSONL file (for progress bars)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def write_jsonl(path: str | Path, records) -> int:
    """Write dicts as JSONL atomically (temp file, then rename); return the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count
