"""`maskdpo evaluate --metric factscore`: FActScore (Min et al., 2023), the paper's out-of-domain metric.

Each response is broken into atomic facts by an LLM (template factscore_facts.txt); each fact is
judged supported or not by an LLM (factscore_judge.txt) against the passages of the response's topic
that best match it in a local knowledge source (maskdpo.loop.knowledge). Per response: the fraction
of supported facts, and with FActScore's length penalty (gamma = 10): times exp(1 - gamma / |A|) when
a response has |A| < gamma facts. Responses that abstain ("I'm sorry, I could not find ...") count in
the respond ratio only. Both steps are resumable append-only jobs (facts.jsonl, judged.jsonl) that
refuse records written with another model or server.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

from ..digests import text_digest
from .annotate import fill, read_templates
from .evaluate import write_result_files
from .jobs import JobReport, run_jobs, settings_mismatch
from .sample import sample_key

GAMMA = 10
TEMPLATE_FILES = ("factscore_facts.txt", "factscore_judge.txt")
# FActScore's abstention markers: such a response states no fact to check.
ABSTAIN = ("i'm sorry", "i am sorry", "i do not have", "i don't have", "i cannot", "i can't", "i could not find",
           "i couldn't find", "i'm not aware", "i am not aware", "there is no information", "i have no information",
           "not familiar with", "no record of")


def load_templates(directory: str | Path | None = None) -> dict[str, str]:
    return read_templates(directory, TEMPLATE_FILES, "FactScore")


def abstains(response: str) -> bool:
    head = response.strip().lower()[:200]
    return not head or any(marker in head for marker in ABSTAIN)


def parse_facts(reply: str) -> list[str]:
    """The facts of an extraction reply: lines starting with "- ", "* " or "1." (markers removed)."""
    facts = []
    for line in reply.splitlines():
        match = re.match(r"\s*(?:[-*•]|\d{1,3}[.)])\s+(.+)", line)
        if match and match.group(1).strip():
            facts.append(match.group(1).strip())
    return facts


def parse_verdict(reply: str) -> bool | None:
    """True / False from a judge's reply (the last of the two words wins); None when neither appears."""
    hits = [(m.start(), m.group(0).lower() == "true") for m in re.finditer(r"\b(true|false)\b", reply, re.I)]
    return max(hits)[1] if hits else None


def extract(samples: list[dict], output, client, templates, concurrency: int = 8) -> JobReport:
    extractor = {"source": client.server.base_url, "model": client.server.model,
                 "template": text_digest(templates["factscore_facts.txt"])}
    responses = {sample_key(s): s["response"] for s in samples}
    mismatch = settings_mismatch("extractor", extractor, sample_key, responses, "response", "the responses file's")

    def work(sample):
        topic = sample.get("topic") or ""
        facts, abstained = [], abstains(sample["response"])
        if not abstained:
            prompt = fill(templates["factscore_facts.txt"], {"topic": topic, "response": sample["response"]})
            facts = parse_facts(client.complete([{"role": "user", "content": prompt}], temperature=0.0,
                                                max_tokens=1024))
        return {"question_id": sample["question_id"], "sample_id": sample["sample_id"], "topic": topic,
                "response": sample["response"], "abstained": abstained, "facts": facts, "extractor": extractor}

    return run_jobs(samples, work, output, sample_key, concurrency, desc="extracting facts", mismatch=mismatch)


def fact_key(record: dict) -> tuple:
    return (*sample_key(record), int(record["index"]))


def judge(fact_records: list[dict], output, client, templates, knowledge, concurrency: int = 8,
          passages: int = 5) -> JobReport:
    judge_info = {"source": client.server.base_url, "model": client.server.model, "passages": passages,
                  "template": text_digest(templates["factscore_judge.txt"]), "knowledge": knowledge.digest}
    items = [{"question_id": r["question_id"], "sample_id": r["sample_id"], "topic": r["topic"], "index": i,
              "fact": fact} for r in fact_records for i, fact in enumerate(r["facts"])]
    facts = {fact_key(i): i["fact"] for i in items}
    mismatch = settings_mismatch("judge", judge_info, fact_key, facts, "fact", "facts.jsonl's")

    def work(item):
        context = "\n\n".join(knowledge.retrieve(item["topic"], item["fact"], passages))
        prompt = fill(templates["factscore_judge.txt"], {"topic": item["topic"], "passages": context,
                                                         "fact": item["fact"]})
        verdict = parse_verdict(client.complete([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=16))
        return {**item, "supported": bool(verdict), **({"unparsed": True} if verdict is None else {}),
                "judge": judge_info}

    return run_jobs(items, work, output, fact_key, concurrency, desc="judging facts", mismatch=mismatch)


def score(fact_records: list[dict], judged: list[dict], gamma: int = GAMMA) -> dict:
    """FActScore overall and per topic: mean per-response score (x100) with and without the length
    penalty, pooled supported / all facts, respond ratio, facts per responding response."""
    verdicts = {fact_key(r): r for r in judged}
    groups = defaultdict(lambda: {"responses": 0, "responded": 0, "without_facts": 0, "facts": 0, "supported": 0,
                                  "unparsed": 0, "scores": [], "penalised": []})
    for record in fact_records:
        for group in ("all", record["topic"] or "?"):
            g = groups[group]
            g["responses"] += 1
            if record["abstained"]:
                continue
            g["responded"] += 1
            if not record["facts"]:
                g["without_facts"] += 1
                continue
            marks = [verdicts.get((*sample_key(record), i)) for i in range(len(record["facts"]))]
            if any(m is None for m in marks):
                raise ValueError(f"facts of {sample_key(record)} are not all judged: rerun to finish judging")
            supported = sum(m["supported"] for m in marks)
            n = len(marks)
            g["facts"] += n
            g["supported"] += supported
            g["unparsed"] += sum(bool(m.get("unparsed")) for m in marks)
            g["scores"].append(supported / n)
            g["penalised"].append(supported / n * (math.exp(1 - gamma / n) if n < gamma else 1.0))
    out = {}
    for group, g in groups.items():
        scored = len(g["scores"])
        out[group] = {
            "responses": g["responses"], "responded": g["responded"], "without_facts": g["without_facts"],
            "respond_ratio": g["responded"] / g["responses"] if g["responses"] else None,
            "facts": g["facts"], "supported": g["supported"], "unparsed": g["unparsed"],
            "facts_per_response": g["facts"] / scored if scored else None,
            "factscore": 100 * sum(g["scores"]) / scored if scored else None,
            "factscore_penalised": 100 * sum(g["penalised"]) / scored if scored else None,
            "pooled": 100 * g["supported"] / g["facts"] if g["facts"] else None,
        }
    return out


def _number(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict, title: str = "FactScore") -> str:
    lines = [f"# {title}", "", f"| subset | FactScore | with length penalty (gamma {GAMMA}) | pooled | respond ratio | "
             "facts/response | responses | unparsed |", "|---|---|---|---|---|---|---|---|"]
    for group in ["all"] + sorted(g for g in result if g != "all"):
        r = result[group]
        lines.append(f"| {group} | {_number(r['factscore'])} | {_number(r['factscore_penalised'])} | "
                     f"{_number(r['pooled'])} | {_number(r['respond_ratio'], 3)} | {_number(r['facts_per_response'])} | "
                     f"{r['responses']} | {r['unparsed']} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out_dir: str | Path) -> Path:
    return write_result_files(result, out_dir, "factscore", markdown(result))


def compare(a: str | Path, b: str | Path) -> str:
    """B minus A for every subset both have."""
    ra, rb = (json.loads((Path(p) / "factscore.json").read_text()) for p in (a, b))
    lines = [f"# FactScore: {b} vs {a}", "", "| subset | FactScore A | FactScore B | difference | penalised B-A | "
             "respond ratio B-A | facts/response B-A |", "|---|---|---|---|---|---|---|"]
    for group in ["all"] + sorted(g for g in ra if g != "all" and g in rb):
        x, y = ra[group], rb[group]
        if x["factscore"] is None or y["factscore"] is None:
            continue
        lines.append(f"| {group} | {x['factscore']:.2f} | {y['factscore']:.2f} | {y['factscore'] - x['factscore']:+.2f} | "
                     f"{y['factscore_penalised'] - x['factscore_penalised']:+.2f} | "
                     f"{y['respond_ratio'] - x['respond_ratio']:+.3f} | "
                     f"{y['facts_per_response'] - x['facts_per_response']:+.2f} |")
    return "\n".join(lines) + "\n"
