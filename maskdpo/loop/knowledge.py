"""The knowledge source FactScore checks facts against: a JSONL of {"title", "text"} (a Wikipedia
subset, say), cut into passages and indexed once with SQLite's FTS5 (BM25 ranking, in Python's
standard library). The index is cached beside the other caches, keyed by the file's sha256.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from ..data.errors import RecordError
from ..data.jsonl import read_records
from ..digests import file_digest

PASSAGE_WORDS = 100  # FActScore's passage length


def _passages(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)] or [""]


class KnowledgeIndex:
    def __init__(self, path: str | Path, digest: str = ""):
        self.path = Path(path)
        self.digest = digest  # of the source file: verdicts judged against another source are not reused
        self.db = sqlite3.connect(str(self.path), check_same_thread=False)

    @classmethod
    def build(cls, source: str | Path, cache_dir: str | Path) -> KnowledgeIndex:
        """The index of `source`, built on first use and reused while the file is unchanged."""
        source = Path(source)
        digest = file_digest(source)[:32]
        index = Path(cache_dir) / f"knowledge-{digest}.sqlite"
        if index.exists():
            return cls(index, digest)

        def parse(obj, line):
            if not isinstance(obj, dict):
                raise RecordError("an article must be a JSON object with title and text")
            for key in ("title", "text"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise RecordError("must be a non-empty string", key)
            return obj["title"].strip(), obj["text"]

        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(index.name + f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(str(tmp))
        db.execute("CREATE VIRTUAL TABLE passages USING fts5(title UNINDEXED, body, tokenize='unicode61')")
        db.execute("CREATE TABLE titles (title TEXT PRIMARY KEY)")
        for _, (title, text) in read_records(source, parse):
            db.execute("INSERT OR IGNORE INTO titles VALUES (?)", (title,))
            db.executemany("INSERT INTO passages VALUES (?, ?)", [(title, p) for p in _passages(text)])
        db.commit()
        db.close()
        os.replace(tmp, index)  # atomic: a reader never sees a half-built index
        return cls(index, digest)

    def has_topic(self, title: str) -> bool:
        return self.db.execute("SELECT 1 FROM titles WHERE title = ?", (title,)).fetchone() is not None

    def retrieve(self, title: str, query: str, k: int = 5) -> list[str]:
        """The k passages of article `title` that best match `query` (BM25); the article's first
        passages when no word of the query occurs in it."""
        words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 1]
        rows = []
        if words:
            match = " OR ".join(f'"{w}"' for w in words)
            rows = self.db.execute("SELECT body FROM passages WHERE passages MATCH ? AND title = ? "
                                   "ORDER BY bm25(passages) LIMIT ?", (match, title, k)).fetchall()
        if not rows:
            rows = self.db.execute("SELECT body FROM passages WHERE title = ? LIMIT ?", (title, k)).fetchall()
        return [r[0] for r in rows]
