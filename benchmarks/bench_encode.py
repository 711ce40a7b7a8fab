"""Benchmark encoding pairs into exact token masks (`maskdpo.data.encode_file`), on the CPU.

Workload: pairs of about `--tokens` tokens per side (prompt + response), made by joining the bundled
example responses (English and Chinese, newlines and lists) into long responses with their
sentence spans, written to a JSONL file in our pair format. Measured, single process unless noted:

  encode_file     parse + chat template + tokenize + masks, pairs/s (the number that matters)
  tokenizer only  the fast tokenizer's own encode of the same rendered strings (a floor for us)
  parallel        encode_file with --workers processes

Writes JSON and a markdown table to benchmarks/results/<date>-cpu/encode-<tokens>.{json,md}.
Usage: python benchmarks/bench_encode.py [--pairs 2000] [--tokens 1024] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def long_pairs(count: int, tokens: int) -> list[dict]:
    """Pairs whose sides hold about `tokens` tokens, built from the bundled annotated samples."""
    from maskdpo.data import load_tokenizer, pair_to_json
    from maskdpo.data.bundled import bundled_pairs

    pairs = [pair_to_json(p) for p in bundled_pairs()]
    tokenizer = load_tokenizer()
    chars_per_token = sum(len(p["chosen"]["response"]) for p in pairs) / sum(
        len(tokenizer(p["chosen"]["response"])["input_ids"]) for p in pairs)

    def joined(sides, target_chars):
        text, sentences = "", []
        k = 0
        while len(text) < target_chars:
            side = sides[k % len(sides)]
            offset = len(text)
            text += side["response"] + "\n\n"
            sentences += [{**s, "start": s["start"] + offset, "end": s["end"] + offset} for s in side["sentences"]]
            k += 1
        return {"response": text.rstrip(), "sentences": sentences}

    out = []
    for i in range(count):
        base = pairs[i % len(pairs)]
        rotated = pairs[i % len(pairs):] + pairs[:i % len(pairs)]
        target = int((tokens - 40) * chars_per_token)
        out.append({"pair_id": f"bench-{i}", "prompt": base["prompt"],
                    "chosen": joined([p["chosen"] for p in rotated], target),
                    "rejected": joined([p["rejected"] for p in rotated], target)})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per side, about")
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel run")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from maskdpo.data import encode_file, load_tokenizer
    from maskdpo.data.masks import _render

    records = long_pairs(args.pairs, args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "pairs.jsonl"
        file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        encode_file(file, max_length=4 * args.tokens)  # warm-up: tokenizer load, template compile
        start = time.perf_counter()
        result = encode_file(file, max_length=4 * args.tokens)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        encode_file(file, max_length=4 * args.tokens, workers=args.workers)
        parallel = time.perf_counter() - start

    tokenizer = load_tokenizer()
    from maskdpo.data import LabelMap, parse_pair

    rendered = []
    for r in records:
        p = parse_pair(r, LabelMap())
        rendered += [_render(tokenizer, p.prompt, p.chosen.text), _render(tokenizer, p.prompt, p.rejected.text)]
    start = time.perf_counter()
    for text in rendered:
        tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    tokenizer_only = time.perf_counter() - start

    tokens = sum(p.length for p in result.pairs) / len(result.pairs) / 2
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    import tokenizers
    import transformers

    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__, "tokenizer": "bundled byte-level BPE, 4096 tokens",
        "pairs": len(result.pairs), "mean_tokens_per_side": tokens,
        "encode_file_pairs_per_s": len(result.pairs) / serial,
        "tokenizer_only_pairs_per_s": len(result.pairs) / tokenizer_only,
        "tokenizer_share_of_encode_time": tokenizer_only / serial,
        "parallel_workers": args.workers, "parallel_pairs_per_s": len(result.pairs) / parallel,
    }
    out_dir = args.out_dir or RESULTS / f"{dt.date.today().isoformat()}-cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"encode-{args.tokens}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        "# encode_file benchmark (CPU)",
        "",
        f"{report['date']}, commit {commit}; {report['cpus']} CPUs ({report['machine']}), Python {report['python']}, "
        f"tokenizers {report['tokenizers']}, transformers {report['transformers']}; {report['tokenizer']}.",
        "",
        f"{report['pairs']} pairs, {tokens:.0f} tokens per side on average (prompt + response).",
        "",
        "| what | pairs/s |",
        "|---|---|",
        f"| encode_file, 1 process | {report['encode_file_pairs_per_s']:.0f} |",
        f"| tokenizer encode alone, 1 process | {report['tokenizer_only_pairs_per_s']:.0f} |",
        f"| encode_file, {args.workers} processes | {report['parallel_pairs_per_s']:.0f} |",
        "",
        f"The tokenizer's own encode is {report['tokenizer_share_of_encode_time']:.0%} of encode_file's time.",
    ]
    (out_dir / f"encode-{args.tokens}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
