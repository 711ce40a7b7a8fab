"""`maskdpo data ...`: pairs, encode (with packing report) and inspect."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bundled import BUNDLED_DATA
from .errors import RecordError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _label_args(parser):
    parser.add_argument("--correct-labels", default=None,
                        help="comma-separated labels counted as correct (default: ok,nofact,no_hallucination)")
    parser.add_argument("--hallucinated-labels", default=None,
                        help="comma-separated labels counted as hallucinated "
                             "(default: contradictory,unverifiable,hallucination)")


def _record_args(parser):
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strict", dest="strict", action="store_true", default=True,
                      help="stop at the first bad record (default)")
    mode.add_argument("--skip-invalid", dest="strict", action="store_false",
                      help="skip bad records, count them, and write each with its reason to the rejects file")
    parser.add_argument("--rejects", default=None, help="rejects file (default: INPUT.rejects.jsonl)")


def _encode_args(parser):
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the bundled one)")
    parser.add_argument("--max-length", type=_positive, default=1024, help="tokens per side, prompt included")
    parser.add_argument("--eot", choices=("always", "last_sentence", "never"), default="always",
                        help="how each response's end-of-turn token counts: always (weight 1, as the authors and "
                             "TRL; default), last_sentence (its last sentence's weight) or never")
    parser.add_argument("--mask", choices=("sentences", "none"), default="sentences",
                        help="sentences (Mask-DPO; default) or none (every response token: plain DPO)")
    parser.add_argument("--workers", type=_positive, default=1, help="processes for large files")
    parser.add_argument("--cache-dir", default=".maskdpo-cache", help="encoded-pairs cache ('' to disable)")


def _label_map(args):
    from .labels import LabelMap

    return LabelMap.from_lists(args.correct_labels, args.hallucinated_labels)


def _pairs(args) -> int:
    from functools import partial

    from .jsonl import ReadReport, read_records, write_jsonl
    from .pairs import build_pairs
    from .records import pair_to_json

    label_map = _label_map(args)
    report = ReadReport(str(args.input))
    samples = [s for _, s in read_records(args.input, partial(_parse_annotated, label_map=label_map),
                                          strict=args.strict, rejects_path=args.rejects, report=report)]
    selection = None
    if args.topics is not None or args.questions_per_topic is not None:
        from .subsample import subsample

        samples, selection = subsample(samples, args.topics, args.questions_per_topic, args.seed)
    pairs, summary = build_pairs(samples, args.pairs_per_question, args.min_gap)
    count = write_jsonl(args.output, (pair_to_json(p) for p in pairs))
    print(report.summary())
    if selection:
        print(selection)
    print("\n".join(summary.lines()))
    print(f"wrote {count} pairs to {args.output}")
    return 0


def _parse_annotated(obj, line, label_map):
    from .records import parse_annotated

    return parse_annotated(obj, label_map)


def _encode(args):
    from .encode import encode_file

    return encode_file(args.pairs, args.tokenizer, max_length=args.max_length, eot=args.eot, mask=args.mask,
                       label_map=_label_map(args), strict=args.strict, rejects_path=args.rejects,
                       cache_dir=args.cache_dir or None, workers=args.workers, progress=True)


def _encode_command(args) -> int:
    from .packing import pack_pairs
    from .tokenizer import load_tokenizer

    result = _encode(args)
    print("\n".join(result.summary_lines()))
    if args.budget:
        packing = pack_pairs(result.pairs, args.budget, load_tokenizer(args.tokenizer).pad_token_id or 0)
        print(f"packed into {len(packing.micro_batches)} micro-batches of {args.budget} tokens, up to "
              f"{packing.max_pairs} pairs each: {packing.efficiency:.1%} of token slots used")
    return 0


def _inspect(args) -> int:
    from .inspect import show_pair
    from .jsonl import _lines
    from .records import parse_pair
    from .tokenizer import load_tokenizer

    result = _encode(args)
    ids = [p.pair_id for p in result.pairs]
    wanted = args.pair_id if args.pair_id is not None else (ids[args.index] if -len(ids) <= args.index < len(ids) else None)
    if wanted not in ids:
        print(f"no pair {args.pair_id!r}" if args.pair_id is not None else
              f"--index {args.index} is out of range: {len(ids)} usable pairs", file=sys.stderr)
        return 2
    line = result.lines[ids.index(wanted)]
    # The record's own line, counted as the reader counts (\n only: a raw \r inside a record is no break).
    raw = next(text for number, text in _lines(Path(args.pairs)) if number == line).decode("utf-8")
    pair = parse_pair(json.loads(raw), _label_map(args), f"line{line}")
    color = {"always": True, "never": False}.get(args.color, sys.stdout.isatty())
    print(show_pair(pair, result.pairs[ids.index(wanted)], load_tokenizer(args.tokenizer), color))
    print("── file: " + "\n".join(result.summary_lines()))
    return 0


def add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="preference data: pairs, token masks, packing, inspection")
    commands = data.add_subparsers(dest="data_command", required=True)

    pairs = commands.add_parser("pairs", help="annotated samples -> preference pairs (best chosen, worst rejected)")
    pairs.add_argument("input", nargs="?", type=Path, default=BUNDLED_DATA / "annotated.jsonl",
                       help="annotated samples JSONL (default: the bundled example)")
    pairs.add_argument("-o", "--output", type=Path, required=True, help="pairs JSONL to write")
    pairs.add_argument("--pairs-per-question", type=_positive, default=1, help="k-th best vs k-th worst, k < this")
    pairs.add_argument("--min-gap", type=float, default=0.0, help="least score difference for a pair")
    pairs.add_argument("--topics", type=_positive, default=None,
                       help="keep the questions of this many topics, drawn with --seed (the paper's scaling study)")
    pairs.add_argument("--questions-per-topic", type=_positive, default=None,
                       help="keep this many questions of each topic, drawn with --seed")
    pairs.add_argument("--seed", type=int, default=0, help="seed of the --topics / --questions-per-topic draw")
    _label_args(pairs)
    _record_args(pairs)
    pairs.set_defaults(func=_pairs)

    encode = commands.add_parser("encode", help="pairs -> token ids and sentence masks (cached); packing report")
    encode.add_argument("pairs", type=Path, help="pairs JSONL (ours or the authors' format)")
    encode.add_argument("--budget", type=_positive, default=None, help="also pack into micro-batches of this many tokens")
    _encode_args(encode)
    _label_args(encode)
    _record_args(encode)
    encode.set_defaults(func=_encode_command)

    inspect = commands.add_parser("inspect", help="show a pair's masks in colour, and totals for the file")
    inspect.add_argument("pairs", type=Path, help="pairs JSONL (ours or the authors' format)")
    which = inspect.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="which usable pair to show")
    which.add_argument("--pair-id", default=None, help="show the pair with this id")
    inspect.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    _encode_args(inspect)
    _label_args(inspect)
    _record_args(inspect)
    inspect.set_defaults(func=_inspect)


# Arguments naming files a command reads, and files it writes (maskdpo data and the data loop).
INPUT_ARGS = ("input", "pairs", "questions", "samples", "annotated", "responses", "knowledge")
OUTPUT_ARGS = ("output", "rejects")


def refuse_overwriting_inputs(args) -> None:
    """An output path equal to an input path would destroy the input (rejects files are rewritten,
    outputs appended to): a ValueError naming both arguments."""
    inputs = {}
    for name in INPUT_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str | Path) and Path(value).exists():
            inputs[name] = Path(value).resolve()
    for name in OUTPUT_ARGS:
        value = getattr(args, name, None)
        if not isinstance(value, str | Path) or not str(value):
            continue
        for source, path in inputs.items():
            if Path(value).resolve() == path:
                raise ValueError(f"--{name} {value} is the file given as {source}: it would be overwritten; "
                                 "write to another path")


def run(args) -> int:
    """Run a data command; bad records and bad arguments end in one clear line and status 2."""
    try:
        refuse_overwriting_inputs(args)
        return args.func(args)
    except (RecordError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
