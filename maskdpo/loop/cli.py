"""`maskdpo sample | annotate | evaluate | prepare`: the data loop against OpenAI-compatible servers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _at_least_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _status(report) -> int:
    """0 when everything is done; 130 when interrupted; 1 when items failed (a rerun continues)."""
    return 130 if report.stopped == "interrupted" else (1 if report.failed or report.stopped else 0)


def _server_args(parser, prefix: str = "", role: str = "policy"):
    dash = f"--{prefix}" if prefix else "--"
    parser.add_argument(f"{dash}base-url", dest=f"{prefix.replace('-', '_')}base_url",
                        help=f"OpenAI-compatible endpoint of the {role}, e.g. http://localhost:8000/v1")
    parser.add_argument(f"{dash}model", dest=f"{prefix.replace('-', '_')}model", help=f"{role} model name on that server")
    if not prefix:
        parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
        parser.add_argument("--concurrency", type=_positive, default=8, help="requests in flight at most")
        parser.add_argument("--max-retries", type=_at_least_zero, default=5,
                            help="retries on timeouts, 5xx and malformed replies")
        parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
        parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubled each time)")


def _client(args, prefix: str = ""):
    """The policy's client, or with prefix "annotator_" the annotator's (its base URL defaults to the
    policy's: one server may serve both models)."""
    from .client import ChatClient, ServerConfig

    base_url, model = getattr(args, f"{prefix}base_url", None), getattr(args, f"{prefix}model", None)
    if prefix and not base_url:
        base_url = args.base_url
    flag = f"--{prefix.replace('_', '-')}"
    if not base_url or not model:
        raise ValueError(f"{flag}base-url and {flag}model are needed")
    return ChatClient(ServerConfig(base_url, model, args.api_key_env, args.timeout, args.max_retries, args.backoff))


def _annotator(args):
    """The annotator's client: its own flags when given (even just --annotator-model), else the policy's."""
    if getattr(args, "annotator_base_url", None) or getattr(args, "annotator_model", None):
        return _client(args, "annotator_")
    return _client(args)


def _sampling_args(parser, samples: int, temperature: float):
    parser.add_argument("--samples", type=_positive, default=samples, help="responses per question")
    parser.add_argument("--temperature", type=float, default=temperature, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens (sent in the request body)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sent explicitly: models may default to 0.9")
    parser.add_argument("--max-tokens", type=_positive, default=1024, help="most tokens per response")
    parser.add_argument("--local-model", default=None, help="sample with transformers from this directory instead")


def _sample(args, questions_path, output, samples=None, temperature=None, client=None) -> int:
    from .sample import SamplingConfig, read_questions, sample_local, sample_server

    config = SamplingConfig(samples if samples is not None else args.samples,
                            temperature if temperature is not None else args.temperature, args.top_k, args.top_p,
                            args.max_tokens)
    questions = read_questions(questions_path)
    if args.local_model:
        report = sample_local(questions, output, args.local_model, config)
    else:
        report = sample_server(questions, output, client or _client(args), config, args.concurrency)
    print(report.summary(f"samples -> {output}"))
    return _status(report)


def _annotate(args, samples_path, questions_path, output, client=None) -> int:
    from .annotate import annotate, load_templates
    from .sample import read_questions, read_samples

    samples = read_samples(samples_path)
    questions = {q["question_id"]: q for q in read_questions(questions_path)}
    client = client or _annotator(args)
    report = annotate(samples, questions, output, client, load_templates(args.templates), args.concurrency)
    unparsed = sum(1 for line in Path(output).read_text(encoding="utf-8").splitlines() if line.strip()
                   for s in json.loads(line)["sentences"] if s.get("unparsed"))
    print(report.summary(f"annotations -> {output}"))
    print(f"unparsed annotator replies (counted as unverifiable): {unparsed}; retried requests: {client.retried}")
    return _status(report)


def _annotate_templates(args) -> int:
    from .anah_templates import convert

    print("\n".join(convert(args.anah_prompts, args.output, args.force)))
    return 0


def _read_annotated(path, strict: bool = True):
    from ..data.jsonl import ReadReport, read_records
    from ..data.labels import LabelMap
    from ..data.records import parse_annotated

    def parse(obj, line):
        parse_annotated(obj, LabelMap())  # checks fields, spans and labels, with file and line on error
        return obj

    report = ReadReport(str(path))
    records = [r for _, r in read_records(path, parse, strict=strict, report=report)]
    if report.skipped:
        print(report.summary())
    return records


def _factscore(args) -> int:
    from . import factscore as fs
    from .jobs import done_records
    from .knowledge import KnowledgeIndex
    from .sample import read_samples, sample_key

    if not args.knowledge:
        raise ValueError("--metric factscore needs --knowledge FILE (JSONL of {title, text} articles)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    templates = fs.load_templates(args.templates)
    knowledge = KnowledgeIndex.build(args.knowledge, args.cache_dir)
    responses = args.responses
    if responses is None:
        if not args.questions:
            raise ValueError("give --responses FILE, or --questions with the policy server (and the judge's)")
        policy, judge_client = _client(args), _annotator(args)  # both checked before any request
        status = _sample(args, args.questions, out / "samples.jsonl", samples=1, temperature=args.temperature,
                         client=policy)
        if status:
            return status
        responses = out / "samples.jsonl"
    else:
        judge_client = _annotator(args)
    samples = read_samples(responses)
    missing = sorted({s.get("topic") or "(none)" for s in samples if not knowledge.has_topic(s.get("topic") or "")})
    if missing:
        raise ValueError(f"responses whose topic has no article in {args.knowledge}: {missing[:5]}")
    report = fs.extract(samples, out / "facts.jsonl", judge_client, templates, args.concurrency)
    print(report.summary(f"atomic facts -> {out / 'facts.jsonl'}"))
    if _status(report):
        return _status(report)
    wanted = {sample_key(s) for s in samples}
    facts = [r for k, r in done_records(out / "facts.jsonl", sample_key).items() if k in wanted]
    report = fs.judge(facts, out / "judged.jsonl", judge_client, templates, knowledge, args.concurrency)
    print(report.summary(f"judged facts -> {out / 'judged.jsonl'}"))
    if _status(report):
        return _status(report)
    result = fs.score(facts, list(done_records(out / "judged.jsonl", fs.fact_key).values()))
    path = fs.write_results(result, out)
    print(fs.markdown(result))
    print(f"wrote {path} and factscore.md; retried requests: {judge_client.retried}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import compare, markdown, score, write_results

    if args.compare:
        if args.metric == "factscore":
            from .factscore import compare as compare_factscore

            print(compare_factscore(*args.compare))
        else:
            print(compare(*args.compare))
        return 0
    if not args.output:
        raise ValueError("--output DIR is needed")
    if args.metric == "factscore":
        return _factscore(args)
    annotated = args.annotated
    if annotated is None:
        if not args.questions:
            raise ValueError("give --annotated FILE, or --questions with the policy and annotator servers")
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        policy, annotator = _client(args), _annotator(args)  # both checked before any request
        status = _sample(args, args.questions, out / "samples.jsonl", samples=1, temperature=args.temperature,
                         client=policy)
        status = status or _annotate(args, out / "samples.jsonl", args.questions, out / "annotated.jsonl", annotator)
        if status:
            return status
        annotated = out / "annotated.jsonl"
    records = _read_annotated(annotated)
    if not records:
        raise ValueError(f"{annotated}: no annotated responses to score")
    result = score(records)
    path = write_results(result, args.output)
    print(markdown(result))
    print(f"wrote {path} and eval.md")
    return 0


def _prepare(args) -> int:
    from ..data.encode import encode_file
    from ..data.jsonl import ReadReport, read_records, write_jsonl
    from ..data.labels import LabelMap
    from ..data.pairs import build_pairs
    from ..data.records import pair_to_json, parse_annotated

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    policy, annotator = (None if args.local_model else _client(args)), _annotator(args)  # checked up front
    status = _sample(args, args.questions, out / "samples.jsonl", client=policy)
    status = status or _annotate(args, out / "samples.jsonl", args.questions, out / "annotated.jsonl", annotator)
    if status:
        return status
    # Unusable samples (an empty response, say) are skipped and reported, not fatal.
    report = ReadReport(str(out / "annotated.jsonl"))
    samples = [s for _, s in read_records(out / "annotated.jsonl", lambda obj, line: parse_annotated(obj, LabelMap()),
                                          strict=False, report=report)]
    print(report.summary())
    pairs, summary = build_pairs(samples, args.pairs_per_question)
    write_jsonl(out / "pairs.jsonl", (pair_to_json(p) for p in pairs))
    print("\n".join(summary.lines()))
    encoded = encode_file(out / "pairs.jsonl", args.tokenizer, max_length=args.max_length, cache_dir=args.cache_dir)
    print("\n".join(encoded.summary_lines()))
    print(f"ready to train: --data.pairs {out / 'pairs.jsonl'}")
    return 0


def add_loop_commands(sub) -> None:
    sample = sub.add_parser("sample", help="N responses per question from a server (or a local model)")
    sample.add_argument("--questions", required=True, help="questions JSONL")
    sample.add_argument("--output", required=True, help="samples JSONL (appended; a rerun resumes)")
    _server_args(sample)
    _sampling_args(sample, samples=4, temperature=0.8)
    sample.set_defaults(func=lambda a: _sample(a, a.questions, a.output))

    annotate = sub.add_parser("annotate", help="label every sentence with the three-turn annotator dialogue")
    annotate.add_argument("--samples", required=True, help="samples JSONL")
    annotate.add_argument("--questions", required=True, help="questions JSONL (reference documents)")
    annotate.add_argument("--output", required=True, help="annotated samples JSONL (appended; a rerun resumes)")
    annotate.add_argument("--templates", default=None, help="directory with facts.txt, reference.txt, judge.txt "
                                                               "(default: the bundled ones)")
    _server_args(annotate, role="annotator")
    annotate.set_defaults(func=lambda a: _annotate(a, a.samples, a.questions, a.output))

    templates = sub.add_parser("annotate-templates", help="write the ANAH-v2 annotator's own prompts (English, and "
                                                            "Chinese as *.zh.txt) as annotate --templates files, from "
                                                            "your copy of its anahv2_prompt.py")
    templates.add_argument("--anah-prompts", required=True, metavar="FILE",
                           help="eval/anah_v2/anahv2_prompt.py of github.com/open-compass/ANAH (imported: it runs)")
    templates.add_argument("-o", "--output", required=True, metavar="DIR",
                           help="directory for facts.txt, reference.txt, judge.txt and their .zh.txt (created)")
    templates.add_argument("--force", action="store_true", help="overwrite template files there that hold other text")
    templates.set_defaults(func=_annotate_templates)

    evaluate = sub.add_parser("evaluate", help="ANAH score of annotated responses (or sample greedily and annotate); "
                                               "--metric factscore: FActScore against a local knowledge source")
    evaluate.add_argument("--metric", choices=("anah", "factscore"), default="anah",
                          help="anah (default: sentence labels, in domain) or factscore (atomic facts judged against "
                               "--knowledge, the paper's out-of-domain biography metric)")
    evaluate.add_argument("--knowledge", default=None, help="factscore: JSONL of {title, text} articles (topics = titles)")
    evaluate.add_argument("--responses", default=None, help="factscore: responses JSONL (samples format) to score")
    evaluate.add_argument("--cache-dir", default=".maskdpo-cache", help="factscore: where the knowledge index is cached")
    evaluate.add_argument("--annotated", default=None, help="annotated responses JSONL to score")
    evaluate.add_argument("--questions", default=None, help="test questions: sample (greedy) and annotate first")
    evaluate.add_argument("--output", default=None, help="directory for eval.json and eval.md")
    evaluate.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="print B minus A (eval dirs or files)")
    evaluate.add_argument("--templates", default=None, help="annotator (or factscore) prompt templates directory "
                                                             "(default: the bundled ones)")
    _server_args(evaluate)
    _server_args(evaluate, "annotator-", role="annotator")
    _sampling_args(evaluate, samples=1, temperature=0.0)
    evaluate.set_defaults(func=_evaluate)

    prepare = sub.add_parser("prepare", help="sample -> annotate -> pairs -> encoded, ready to train")
    prepare.add_argument("--questions", required=True, help="training questions JSONL (reference documents)")
    prepare.add_argument("--output", required=True, help="directory: samples, annotated, pairs")
    prepare.add_argument("--templates", default=None, help="annotator prompt templates directory (default: the bundled ones)")
    prepare.add_argument("--pairs-per-question", type=_positive, default=1, help="k-th best vs k-th worst, k < this")
    prepare.add_argument("--tokenizer", default=None, help="tokenizer for the encoded cache (default: bundled)")
    prepare.add_argument("--max-length", type=int, default=1024, help="tokens per side, prompt included")
    prepare.add_argument("--cache-dir", default=".maskdpo-cache", help="encoded-pairs cache")
    _server_args(prepare)
    _server_args(prepare, "annotator-", role="annotator")
    _sampling_args(prepare, samples=4, temperature=0.8)
    prepare.set_defaults(func=_prepare)


def run(args) -> int:
    from ..data.cli import refuse_overwriting_inputs
    from ..data.errors import RecordError
    from .client import ChatError

    try:
        refuse_overwriting_inputs(args)
        return args.func(args)
    except (ValueError, OSError, RecordError, ChatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
