"""Encoding a pairs file: parse, build masks, in parallel for large files, cached on disk.

The cache key is a sha256 over the pairs file's bytes, the tokenizer's files, the encoding options
and the package version, so a change to any of them re-encodes and nothing stale is ever read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..digests import file_digest, source_digest
from .errors import RecordError
from .jsonl import ReadReport, count_records, read_records
from .labels import LabelMap
from .masks import EncodedPair, EncodedSide, encode_pair, end_of_turn
from .records import parse_pair
from .tokenizer import load_tokenizer, tokenizer_fingerprint

# Below this many lines a pool's start-up (each worker loads the tokenizer) costs more than it saves.
PARALLEL_MIN_LINES = 2000


@dataclass
class EncodeResult:
    pairs: list[EncodedPair]
    report: ReadReport
    lines: list[int] = field(default_factory=list)  # the file line each pair came from
    truncated: Counter = field(default_factory=Counter)  # sides truncated: {"chosen": n, "rejected": m}
    from_cache: bool = False
    key: str | None = None  # the cache key (data, tokenizer, options), when a cache_dir was given
    eot_note: str = ""  # how the end-of-turn token was counted, or that the template has none

    def summary_lines(self) -> list[str]:
        tokens = sum(p.length for p in self.pairs)
        response = sum(len(s.input_ids) - s.prompt_length for p in self.pairs for s in (p.chosen, p.rejected))
        kept = sum(s.kept_tokens for p in self.pairs for s in (p.chosen, p.rejected))
        out = [self.report.summary() + (" (from cache)" if self.from_cache else "")]
        out.append(f"pairs: {len(self.pairs)}   tokens: {tokens}   response tokens kept: "
                   f"{kept}/{response} ({kept / max(response, 1):.1%})")
        one_sided = {side: sum(1 for p in self.pairs if getattr(p, side).kept_tokens == 0)
                     for side in ("chosen", "rejected")}
        if sum(one_sided.values()):
            out.append(f"pairs with nothing kept on one side: {one_sided['chosen']} chosen, "
                       f"{one_sided['rejected']} rejected (they train that side only)")
        if self.eot_note:
            out.append(self.eot_note)
        if sum(self.truncated.values()):
            out.append(f"truncated to max_length: {self.truncated['chosen']} chosen, "
                       f"{self.truncated['rejected']} rejected sides")
        return out


def _encode_record(obj, line: int, *, tokenizer_path, label_map, max_length, eot, mask) -> EncodedPair:
    pair = parse_pair(obj, label_map, default_id=f"line{line}")
    return encode_pair(pair, load_tokenizer(tokenizer_path), max_length=max_length, eot=eot, mask=mask)


def _code_and_libraries() -> str:
    """What else decides the masks: this package's data code and the template/tokenizer libraries."""
    import tokenizers
    import transformers

    digest = hashlib.sha256(f"{__version__}:{transformers.__version__}:{tokenizers.__version__}".encode())
    digest.update(source_digest("data").encode())
    return digest.hexdigest()


def cache_key(pairs_path: Path, tokenizer_path, options: dict) -> str:
    digest = hashlib.sha256(_code_and_libraries().encode())
    digest.update(file_digest(pairs_path).encode())
    digest.update(tokenizer_fingerprint(tokenizer_path).encode())
    digest.update(json.dumps(options, sort_keys=True, default=sorted).encode())
    return digest.hexdigest()[:32]


def encode_file(
    pairs_path: str | Path,
    tokenizer_path: str | Path | None = None,
    *,
    max_length: int = 1024,
    eot: str = "always",
    mask: str = "sentences",
    label_map: LabelMap | None = None,
    strict: bool = True,
    rejects_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
) -> EncodeResult:
    """Encode every pair of a JSONL file (our format or the authors'); see encode_pair for masks.

    Records that fail are errors in strict mode; with strict=False they are skipped, counted and
    written to the rejects file. Pairs with no kept token are always skipped that way. workers > 1
    encodes in that many processes when the file is large. With cache_dir, the result is stored
    there and reused while the file, tokenizer and options are unchanged.
    """
    pairs_path = Path(pairs_path)
    label_map = label_map or LabelMap()
    options = dict(tokenizer_path=str(tokenizer_path) if tokenizer_path else None, label_map=label_map,
                   max_length=max_length, eot=eot, mask=mask)
    cache_file = None
    if cache_dir is not None:
        key_options = {**options, "tokenizer_path": None,
                       "label_map": [sorted(label_map.correct), sorted(label_map.hallucinated)]}
        key = cache_key(pairs_path, tokenizer_path, key_options)
        cache_file = Path(cache_dir) / f"encoded-{key}.npz"
        cached = _load_cache(cache_file, pairs_path, rejects_path) if cache_file.exists() else None
        # A cached run that skipped invalid records cannot stand in for a strict one: re-read, and fail.
        if cached is not None and not (strict and cached.report.invalid):
            cached.key, cached.eot_note = key, _eot_note(tokenizer_path, eot)
            return cached

    report = ReadReport(str(pairs_path))
    total = count_records(pairs_path) if progress or workers > 1 else 0
    workers = workers if total >= PARALLEL_MIN_LINES else 1
    parse = functools.partial(_encode_record, **options)
    records = read_records(pairs_path, parse, strict=strict, rejects_path=rejects_path, report=report,
                           workers=workers)
    if progress:
        from tqdm import tqdm

        records = tqdm(records, total=total, unit="pair", desc="encoding", disable=None)
    kept = list(records)
    first_line = {}
    for line, pair in kept:  # ids name pairs in errors, metrics and inspection: they must be unique
        if pair.pair_id in first_line:
            raise RecordError(f"duplicate pair id {pair.pair_id!r}, first on line {first_line[pair.pair_id]}",
                              "pair_id", path=str(pairs_path), line=line)
        first_line[pair.pair_id] = line
    result = EncodeResult([pair for _, pair in kept], report, [line for line, _ in kept])
    for pair in result.pairs:
        for name in ("chosen", "rejected"):
            result.truncated[name] += bool(getattr(pair, name).truncated)
    result.eot_note = _eot_note(tokenizer_path, eot)
    if cache_file is not None:
        _save_cache(cache_file, result)
        result.key = key
    return result


def _eot_note(tokenizer_path, eot: str) -> str:
    if eot == "never":
        return "end-of-turn token: not counted (eot: never)"
    tokenizer = load_tokenizer(tokenizer_path)
    token = end_of_turn(tokenizer)
    if token is None:
        return (f"end-of-turn token: none, the chat template writes nothing after an assistant message "
                f"(eot: {eot} counts nothing)")
    return f"end-of-turn token: {tokenizer.convert_ids_to_tokens(token)!r} (eot: {eot})"


def _save_cache(path: Path, result: EncodeResult) -> None:
    sides = [s for p in result.pairs for s in (p.chosen, p.rejected)]
    lengths = np.array([len(s.input_ids) for s in sides], dtype=np.int64)
    meta = {
        "pair_ids": [p.pair_id for p in result.pairs],
        "lines": result.lines,
        "report": {"read": result.report.read, "kept": result.report.kept, "skipped": dict(result.report.skipped),
                   "invalid": result.report.invalid},
        "rejects": Path(result.report.rejects_path).read_text(encoding="utf-8") if result.report.rejects_path else "",
        "truncated": dict(result.truncated),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        input_ids=np.concatenate([s.input_ids for s in sides]) if sides else np.zeros(0, np.int64),
        weights=np.concatenate([s.weights for s in sides]) if sides else np.zeros(0, np.float32),
        lengths=lengths,
        prompt_lengths=np.array([s.prompt_length for s in sides], dtype=np.int64),
        truncated=np.array([s.truncated for s in sides], dtype=np.int64),
        kept_tokens=np.array([s.kept_tokens for s in sides], dtype=np.int64),
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(path)  # atomic: a reader never sees a half-written cache


def _load_cache(path: Path, pairs_path: Path, rejects_path) -> EncodeResult:
    """The cached result, reported for this file; its skipped records are written to this run's
    rejects file, as an encoding run would."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
        ids, weights = data["input_ids"], data["weights"]
        sides = [EncodedSide(ids[a:b], weights[a:b], int(p), int(t), int(k))
                 for a, b, p, t, k in zip(bounds[:-1], bounds[1:], data["prompt_lengths"], data["truncated"],
                                          data["kept_tokens"])]
    pairs = [EncodedPair(pid, sides[2 * i], sides[2 * i + 1]) for i, pid in enumerate(meta["pair_ids"])]
    r = meta["report"]
    report = ReadReport(str(pairs_path), r["read"], r["kept"], Counter(r["skipped"]), None, r["invalid"])
    rejects = Path(rejects_path or pairs_path.with_name(pairs_path.name + ".rejects.jsonl"))
    rejects.unlink(missing_ok=True)
    if meta["rejects"]:
        rejects.write_text(meta["rejects"], encoding="utf-8")
        report.rejects_path = str(rejects)
    return EncodeResult(pairs, report, meta["lines"], Counter(meta["truncated"]), from_cache=True)
