"""`maskdpo annotate`: sentence-level factuality labels through an annotator served over HTTP.

Each response is split into sentences (maskdpo.data.sentences) and every sentence is judged in
three chat turns against the question's reference document, as ANAH-v2 does:
  1. facts present?            <Facts Present> / <No Facts>              (no facts: label nofact)
  2. relevant reference text   the passages, or <No Reference Information>
  3. verdict                   <No Hallucination> / <Contradictory> / <Unverifiable>
                               -> ok / contradictory / unverifiable
The prompts are template files ({question}, {response}, {sentence}, {reference}); the ANAH-v2
model expects the ones it was trained with, so point --templates at those for it. A reply that
matches no label is recorded as unparsed (`"unparsed": true`) and counted as unverifiable.
Output: the annotated-samples format of maskdpo.data (one line per response, appended, resumable).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..assets import TEMPLATES as ASSET_TEMPLATES
from ..data.sentences import split_sentences
from .jobs import JobReport, run_jobs, settings_mismatch
from .sample import sample_key

TEMPLATES = ASSET_TEMPLATES
TEMPLATE_FILES = ("facts.txt", "reference.txt", "judge.txt")

FACTS = {"factspresent": "facts", "nofacts": "nofact"}
VERDICTS = {"nohallucination": "ok", "contradictory": "contradictory", "unverifiable": "unverifiable"}
_WORDS = {"factspresent": ["facts", "present"], "nofacts": ["no", "facts"], "nohallucination": ["no", "hallucination"],
          "contradictory": ["contradictory"], "unverifiable": ["unverifiable"]}


def read_templates(directory: str | Path | None, names: tuple[str, ...], what: str) -> dict[str, str]:
    """name -> text of prompt templates from `directory` (default: the bundled ones)."""
    directory = Path(directory) if directory else TEMPLATES
    templates = {}
    for name in names:
        file = directory / name
        if not file.is_file():
            raise FileNotFoundError(f"{file}: {what} template missing (need {', '.join(names)})")
        templates[name] = file.read_text(encoding="utf-8")
    return templates


def load_templates(directory: str | Path | None = None) -> dict[str, str]:
    return read_templates(directory, TEMPLATE_FILES, "annotation")


def parse_tag(reply: str, tags: dict[str, str]) -> str | None:
    """The label a reply gives, tolerant of case, spaces, underscores and markdown.

    The last bracketed tag wins ("options: <A>, <B>. Answer: <B>", "not <A> but <B>"); without
    brackets, the last tag written as whole words ("No_Hallucination", "verdict: unverifiable").
    None when no tag appears.
    """
    def fold(text):
        return re.sub(r"[\s_*]+", "", text.lower())

    bracketed = [fold(m) for m in re.findall(r"<([^<>]{1,40})>", reply)]
    labels = [tags[t] for t in bracketed if t in tags]
    if labels:
        return labels[-1]
    words = {tag: r"\b" + r"[\s_*]*".join(re.escape(w) for w in _WORDS[tag]) + r"\b" for tag in tags}
    hits = [(m.start(), tags[tag]) for tag, pattern in words.items() for m in re.finditer(pattern, reply.lower())]
    return max(hits)[1] if hits else None


def fill(template: str, values: dict[str, str]) -> str:
    """Put values into {name} placeholders. Not str.format: responses and documents hold braces."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def annotate_sentence(client, templates, question: dict, response: str, sentence: str) -> tuple[str, bool]:
    """(label, unparsed) for one sentence, by the three-turn dialogue."""
    values = {"question": question["question"], "response": response, "sentence": sentence,
              "reference": question.get("reference", "")}
    messages = [{"role": "user", "content": fill(templates["facts.txt"], values)}]
    reply = client.complete(messages, temperature=0.0)
    facts = parse_tag(reply, FACTS)
    if facts is None:
        return "unverifiable", True
    if facts == "nofact":
        return "nofact", False
    messages += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": fill(templates["reference.txt"], values)}]
    reply = client.complete(messages, temperature=0.0)
    messages += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": fill(templates["judge.txt"], values)}]
    verdict = parse_tag(client.complete(messages, temperature=0.0), VERDICTS)
    return (verdict, False) if verdict else ("unverifiable", True)


def annotate(samples: list[dict], questions: dict[str, dict], output, client, templates: dict[str, str],
             concurrency: int = 8) -> JobReport:
    missing = sorted({str(s["question_id"]) for s in samples} - set(questions))
    if missing:
        raise ValueError(f"samples refer to questions not in the questions file: {missing[:5]}")

    annotator = {"source": client.server.base_url, "model": client.server.model}
    responses = {sample_key(s): s["response"] for s in samples}
    mismatch = settings_mismatch("annotator", annotator, sample_key, responses, "response", "the samples file's")

    def work(sample):
        text = sample["response"]
        sentences = []
        for start, end in split_sentences(text, sample.get("language", "en")):
            label, unparsed = annotate_sentence(client, templates, questions[sample["question_id"]], text,
                                                text[start:end])
            sentences.append({"start": start, "end": end, "label": label, **({"unparsed": True} if unparsed else {})})
        return {"question_id": sample["question_id"], "sample_id": sample["sample_id"],
                "language": sample.get("language", "en"),
                "topic": sample.get("topic") or questions[sample["question_id"]].get("topic"),
                "prompt": sample["prompt"], "response": text, "sentences": sentences, "annotator": annotator}

    return run_jobs(samples, work, output, sample_key, concurrency, desc="annotating", mismatch=mismatch)
