"""`maskdpo evaluate`: the ANAH score of annotated responses, with counts and breakdowns.

ANAH score = 100 x correct / all sentences, pooled over the whole test set (nofact counts as
correct, as in the paper). Also #correct, #incorrect, sentences per response, per-language scores
and the unparsed count (annotator replies that matched no label, counted as unverifiable).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..data.labels import LabelMap


def score(records: list[dict], label_map: LabelMap | None = None) -> dict:
    label_map = label_map or LabelMap()
    totals = defaultdict(lambda: {"responses": 0, "correct": 0, "incorrect": 0, "unparsed": 0})
    for record in records:
        for group in ("all", record.get("language", "?")):
            t = totals[group]
            t["responses"] += 1
            for sentence in record["sentences"]:
                t["correct" if label_map.correctness(sentence["label"]) else "incorrect"] += 1
                t["unparsed"] += bool(sentence.get("unparsed"))
    out = {}
    for group, t in totals.items():
        sentences = t["correct"] + t["incorrect"]
        out[group] = {**t, "sentences": sentences,
                      "anah_score": 100.0 * t["correct"] / sentences if sentences else None,
                      "sentences_per_response": sentences / t["responses"] if t["responses"] else None}
    return out


def markdown(result: dict, title: str = "ANAH score") -> str:
    lines = [f"# {title}", "", "| subset | ANAH score | #correct | #incorrect | sentences/response | responses | unparsed |",
             "|---|---|---|---|---|---|---|"]
    for group in ["all"] + sorted(g for g in result if g != "all"):
        r = result[group]
        score_text = f"{r['anah_score']:.2f}" if r["anah_score"] is not None else "n/a"
        lines.append(f"| {group} | {score_text} | {r['correct']} | {r['incorrect']} | "
                     f"{r['sentences_per_response']:.2f} | {r['responses']} | {r['unparsed']} |")
    return "\n".join(lines) + "\n"


def write_result_files(result: dict, out_dir: str | Path, stem: str, table: str) -> Path:
    """OUT_DIR/STEM.json (the numbers) and OUT_DIR/STEM.md (the table); returns the JSON's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(table)
    return out_dir / f"{stem}.json"


def write_results(result: dict, out_dir: str | Path) -> Path:
    return write_result_files(result, out_dir, "eval", markdown(result))


def _load_result(path: str | Path) -> dict:
    path = Path(path)
    path = path / "eval.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no eval.json (run maskdpo evaluate first)")
    return json.loads(path.read_text())


def compare(a: str | Path, b: str | Path) -> str:
    """A markdown table of B minus A for every subset both have."""
    ra, rb = _load_result(a), _load_result(b)
    lines = [f"# {b} vs {a}", "", "| subset | ANAH score A | ANAH score B | difference | #correct B-A | sentences B-A |",
             "|---|---|---|---|---|---|"]
    for group in ["all"] + sorted(g for g in ra if g != "all" and g in rb):
        x, y = ra[group], rb[group]
        if x["anah_score"] is None or y["anah_score"] is None:
            continue
        lines.append(f"| {group} | {x['anah_score']:.2f} | {y['anah_score']:.2f} | {y['anah_score'] - x['anah_score']:+.2f} "
                     f"| {y['correct'] - x['correct']:+d} | {y['sentences'] - x['sentences']:+d} |")
    return "\n".join(lines) + "\n"
