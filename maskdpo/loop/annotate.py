"""`maskdpo annotate`: sentence-level factuality labels through an annotator served over HTTP.

Each response is split into sentences (maskdpo.data.sentences) and every sentence is judged in
up to three chat turns of one conversation against the question's reference document, following
ANAH-v2's protocol (open-compass/ANAH, example/lmdeploy_example.py):
  1. facts present?            <Facts Present> / <No Facts>              (no facts: label nofact)
  2. relevant reference text   the passages, or <No Reference Information>
                               (no reference information: label unverifiable, no third turn)
  3. verdict                   <No Hallucination> / <Contradictory> / <Unverifiable>
                               -> ok / contradictory / unverifiable
Tags are also read in Chinese: <有事实> / <无事实>, <无参考信息>, <无幻觉> / <矛盾> / <无法验证>.
The early stop of turn 2 reads the tag as parse_tag does (bracketed, any case, spaces, underscores,
markdown; or the English words "no reference information"); ANAH-v2's own script stops on the
string "noreferenceinformation" or "无参考信息" anywhere in the reply, Chinese without brackets too.

The prompts are template files facts.txt, reference.txt, judge.txt, with the placeholders
{question}, {response} (the whole response), {sentence}, {reference} (the question's reference
document) and, in judge.txt only, {passages} (the annotator's reply of turn 2: what ANAH-v2's
hallucination prompt gets as its reference). A directory may also hold language variants
NAME.<lang>.txt (facts.zh.txt, reference.zh.txt, judge.zh.txt: all three): a sample whose
"language" is <lang> is annotated with them, any other with the plain files. The ANAH-v2 model
expects the prompts it was trained with: `maskdpo annotate-templates --anah-prompts anahv2_prompt.py
-o DIR` (maskdpo.loop.anah_templates) writes them from a copy of its authors' file, English plain
and Chinese as .zh; then annotate with --templates DIR. Templates are used byte for byte as stored.
A reply that matches no label is recorded as unparsed (`"unparsed": true`) and counted as unverifiable.
Output: the annotated-samples format of maskdpo.data (one line per response, appended, resumable).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..assets import TEMPLATES as ASSET_TEMPLATES
from ..data.sentences import split_sentences
from ..digests import text_digest
from .jobs import JobReport, run_jobs, settings_mismatch
from .sample import sample_key

TEMPLATES = ASSET_TEMPLATES
TEMPLATE_FILES = ("facts.txt", "reference.txt", "judge.txt")

# Tags as parse_tag folds them (lower case; spaces, underscores and asterisks removed) -> label.
FACTS = {"factspresent": "facts", "nofacts": "nofact", "有事实": "facts", "无事实": "nofact"}
VERDICTS = {"nohallucination": "ok", "contradictory": "contradictory", "unverifiable": "unverifiable",
            "无幻觉": "ok", "矛盾": "contradictory", "无法验证": "unverifiable"}
NO_REFERENCE = {"noreferenceinformation": "unverifiable", "无参考信息": "unverifiable"}
# The plain-words fallback of parse_tag (English only: Chinese tags count only in brackets).
_WORDS = {"factspresent": ["facts", "present"], "nofacts": ["no", "facts"], "nohallucination": ["no", "hallucination"],
          "contradictory": ["contradictory"], "unverifiable": ["unverifiable"],
          "noreferenceinformation": ["no", "reference", "information"]}
# NAME.<lang>.txt: a language code such as zh, en, pt-BR, zh_Hant.
_VARIANT = re.compile(r"(?P<stem>.+)\.(?P<lang>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*)\.txt")


def read_templates(directory: str | Path | None, names: tuple[str, ...], what: str) -> dict[str, str]:
    """file name -> text of prompt templates from `directory` (default: the bundled ones): each of
    `names`, and every complete set of language variants NAME.<lang>.txt (keys "facts.zh.txt", ...;
    pick one with `pick_template`). Texts are exactly as stored (no newline translation)."""
    directory = Path(directory) if directory else TEMPLATES
    templates = {}
    for name in names:
        file = directory / name
        if not file.is_file():
            raise FileNotFoundError(f"{file}: {what} template missing (need {', '.join(names)})")
        templates[name] = _read(file)
    variants: dict[str, set[str]] = {}
    for file in directory.iterdir():
        match = _VARIANT.fullmatch(file.name)
        if match and match["stem"] + ".txt" in names and file.is_file():
            variants.setdefault(match["lang"], set()).add(file.name)
    for lang, found in sorted(variants.items()):
        wanted = [f"{name[:-len('.txt')]}.{lang}.txt" for name in names]
        missing = [name for name in wanted if name not in found]
        if missing:
            raise FileNotFoundError(f"{directory}: {', '.join(sorted(found))} without {', '.join(missing)}: "
                                    f"a language's {what} templates come as a set ({', '.join(wanted)})")
        templates.update((name, _read(directory / name)) for name in wanted)
    return templates


def _read(file: Path) -> str:
    with open(file, encoding="utf-8", newline="") as f:
        return f.read()


def templates_digest(templates: dict[str, str]) -> str:
    """A short digest of a set of templates (names and texts), recorded with every annotation."""
    return text_digest(json.dumps(templates, sort_keys=True))


def pick_template(templates: dict[str, str], name: str, language: str | None = None) -> str:
    """The text of template `name` ("facts.txt") for a sample in `language`: its variant
    NAME.<language>.txt when there is one (the language as written, else lower-cased), else `name`."""
    if language:
        stem = name[:-len(".txt")]
        for lang in dict.fromkeys((language, language.lower())):
            if f"{stem}.{lang}.txt" in templates:
                return templates[f"{stem}.{lang}.txt"]
    return templates[name]


def load_templates(directory: str | Path | None = None) -> dict[str, str]:
    """The annotation templates of `directory` (default: the bundled ones), variants included."""
    templates = read_templates(directory, TEMPLATE_FILES, "annotation")
    misplaced = sorted(name for name, text in templates.items() if "{passages}" in text and
                       not name.startswith("judge."))
    if misplaced:
        raise ValueError(f"{Path(directory) if directory else TEMPLATES}: {', '.join(misplaced)} use {{passages}}, "
                         "which only judge templates can (it is the reply to the reference turn)")
    return templates


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
    words = {tag: r"\b" + r"[\s_*]*".join(re.escape(w) for w in _WORDS[tag]) + r"\b" for tag in tags
             if tag in _WORDS}
    hits = [(m.start(), tags[tag]) for tag, pattern in words.items() for m in re.finditer(pattern, reply.lower())]
    return max(hits)[1] if hits else None


def fill(template: str, values: dict[str, str]) -> str:
    """Put values into {name} placeholders, in one pass: a value is never searched for placeholders
    (responses, documents and replies hold braces, even "{sentence}"). Not str.format for the same reason."""
    if not values:
        return template
    pattern = re.compile(r"\{(" + "|".join(re.escape(name) for name in values) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)


def annotate_sentence(client, templates, question: dict, response: str, sentence: str,
                      language: str | None = None) -> tuple[str, bool]:
    """(label, unparsed) for one sentence, by ANAH-v2's dialogue (module docstring), with the
    templates of `language` where the directory has them."""
    values = {"question": question["question"], "response": response, "sentence": sentence,
              "reference": question.get("reference", "")}
    messages = [{"role": "user", "content": fill(pick_template(templates, "facts.txt", language), values)}]
    reply = client.complete(messages, temperature=0.0)
    facts = parse_tag(reply, FACTS)
    if facts is None:
        return "unverifiable", True
    if facts == "nofact":
        return "nofact", False
    messages += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": fill(pick_template(templates, "reference.txt", language), values)}]
    passages = client.complete(messages, temperature=0.0)
    if parse_tag(passages, NO_REFERENCE):
        return "unverifiable", False  # nothing in the reference to judge against: ANAH-v2 stops here
    judge = fill(pick_template(templates, "judge.txt", language), {**values, "passages": passages})
    messages += [{"role": "assistant", "content": passages}, {"role": "user", "content": judge}]
    verdict = parse_tag(client.complete(messages, temperature=0.0), VERDICTS)
    return (verdict, False) if verdict else ("unverifiable", True)


def annotate(samples: list[dict], questions: dict[str, dict], output, client, templates: dict[str, str],
             concurrency: int = 8) -> JobReport:
    missing = sorted({str(s["question_id"]) for s in samples} - set(questions))
    if missing:
        raise ValueError(f"samples refer to questions not in the questions file: {missing[:5]}")

    # The prompts are settings too: labels from other templates are never mixed into one file.
    annotator = {"source": client.server.base_url, "model": client.server.model,
                 "templates": templates_digest(templates)}
    responses = {sample_key(s): s["response"] for s in samples}
    mismatch = settings_mismatch("annotator", annotator, sample_key, responses, "response", "the samples file's")

    def work(sample):
        text = sample["response"]
        sentences = []
        for start, end in split_sentences(text, sample.get("language", "en")):
            label, unparsed = annotate_sentence(client, templates, questions[sample["question_id"]], text,
                                                text[start:end], sample.get("language"))
            sentences.append({"start": start, "end": end, "label": label, **({"unparsed": True} if unparsed else {})})
        return {"question_id": sample["question_id"], "sample_id": sample["sample_id"],
                "language": sample.get("language", "en"),
                "topic": sample.get("topic") or questions[sample["question_id"]].get("topic"),
                "prompt": sample["prompt"], "response": text, "sentences": sentences, "annotator": annotator}

    return run_jobs(samples, work, output, sample_key, concurrency, desc="annotating", mismatch=mismatch)
