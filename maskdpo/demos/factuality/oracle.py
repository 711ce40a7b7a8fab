"""The factuality demo's oracle annotator: a judge that knows the world's knowledge file, served
over the OpenAI-compatible chat-completions API on loopback, so that the project's real client,
`maskdpo annotate`'s three-turn ANAH-v2 protocol and `maskdpo evaluate --metric factscore` talk to
it as they would to an LLM.

Its rules (version ORACLE_VERSION; the first version counted garbled sentences as stating no fact,
the third is the second for the world's hedges that begin like facts, the fourth the third for the
fourth world's six attributes and its profession hedge, the fifth the fourth reading the fifth
world's three forms of question (the same labels for every sentence); see
benchmarks/results/2026-12-03-cpu/factuality-world/notes.md, 2026-12-04-cpu/factuality-world/notes.md and
2026-12-06-cpu/factuality-world/notes.md):
  - no fact (<No Facts>: counted correct, as the paper counts nofact) is stated only by, exactly,
    the world's opening ("Here is what I know.", or the article's "NAME is a person of this world."
    of the person asked about) and the hedges ("They grew up in an unknown place.");
  - a sentence beginning with a fact form's stem ("They were born in", "They worked as (a|an)")
    states that attribute: <No Hallucination> when the value that follows is the article's (the
    reference), <Contradictory> when it is another, garbled values included ("They were born inood.");
    <No Reference Information> (unverifiable) when nothing follows;
  - every other sentence -- garbled, or an opening about someone -- states something the
    reference cannot support: unverifiable.
FactScore's two prompts are answered by the same rules: the atomic facts of a response are its
fact-form sentences that are no hedge, and a fact is True when the passages given in the prompt state it.

The prompts are recognised by the bundled templates (maskdpo/assets/templates), whose placeholders
become the fields read back: the server reads only what the client sent.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ...data.sentences import split_sentences
from ...loop.annotate import load_templates as anah_templates
from ...loop.factscore import load_templates as factscore_templates
from .world import ARTICLE_OPENING, FORMS, HEDGES, OPENING, QUESTIONS

ORACLE_VERSION = 5
NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"


def _stem_pattern(form: str) -> re.Pattern:
    """A fact form's stem ("They were born in") and whatever follows as the value; "They worked as a"
    also matches "as an" and "as" alone (the value is then the profession, not "n architect")."""
    stem = re.escape(form.split("{value}")[0].rstrip())
    stem = re.sub(r"\\ a$", r"(?:\\ an?(?=\\s))?", stem)
    return re.compile(stem + r"\s*(?P<value>.*?)\.?")


_FACT = {a: _stem_pattern(form) for a, form in FORMS.items()}
# A hedge cut before its period (max tokens) is still a hedge, as a fact so cut is still the fact.
_HEDGES = [re.compile(re.escape(form.rstrip(".")) + r"\.?") for form in HEDGES.values()]
_QUESTIONS = [re.compile(re.escape(form).replace(r"\{name\}", f"(?P<name>{NAME})")) for form in QUESTIONS]


def parse_fact(sentence: str) -> tuple[str, str] | None:
    """(attribute, value) of a sentence beginning with a fact form's stem (about the person asked
    about), the value as written, garbled or empty; None otherwise."""
    for attribute, pattern in _FACT.items():
        match = pattern.fullmatch(sentence.strip())
        if match:
            return attribute, match["value"]
    return None


def facts_of(text: str) -> dict[str, str]:
    """attribute -> value for every fact-form sentence of `text` (an article, passages)."""
    out = {}
    for start, end in split_sentences(text, "en"):
        fact = parse_fact(text[start:end])
        if fact:
            out[fact[0]] = fact[1]
    return out


def claimed_fact(sentence: str) -> tuple[str, str] | None:
    """parse_fact of a sentence that states a fact: a hedge ("They were born in an unknown year.")
    begins with a fact form's stem but claims nothing, so it is no atomic fact for FactScore."""
    return parse_fact(sentence) if states_a_fact(sentence, None) else None


def states_a_fact(sentence: str, topic: str | None) -> bool:
    """Everything states something except, exactly, the world's opening, the article's opening about
    the person asked about and the hedges: a garbled sentence or one about someone is no "no fact"."""
    sentence = sentence.strip()
    if sentence == OPENING or (topic is not None and sentence == ARTICLE_OPENING.format(name=topic)):
        return False
    return not any(p.fullmatch(sentence) for p in _HEDGES)


def judge(sentence: str, topic: str | None, reference: str) -> str:
    """The label of `sentence` in an answer about `topic`, whose reference document (article) is
    `reference`: ok, contradictory, unverifiable or nofact (the module's rules)."""
    if not states_a_fact(sentence, topic):
        return "nofact"
    fact = parse_fact(sentence)
    known = facts_of(reference)
    if fact is None or not fact[1] or fact[0] not in known:
        return "unverifiable"
    return "ok" if known[fact[0]] == fact[1] else "contradictory"


def topic_of(question: str) -> str | None:
    """The person a question of the world (any form of QUESTIONS) asks about; None for another."""
    for pattern in _QUESTIONS:
        match = pattern.fullmatch(question.strip())
        if match:
            return match["name"]
    return None


def _template_pattern(template: str) -> re.Pattern:
    """The template as a regex whose placeholders are named groups (a repeated one must repeat)."""
    parts, seen = [], set()
    for piece in re.split(r"(\{[a-z_]+\})", template):
        name = piece[1:-1] if re.fullmatch(r"\{[a-z_]+\}", piece) else None
        if name is None:
            parts.append(re.escape(piece))
        elif name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>.*?)")
    return re.compile("".join(parts), re.S)


VERDICT_TAGS = {"ok": "<No Hallucination>", "contradictory": "<Contradictory>", "unverifiable": "<Unverifiable>"}


class Oracle:
    """Replies to the annotator's and FactScore's prompts (the bundled templates)."""

    def __init__(self):
        anah, factscore = anah_templates(), factscore_templates()
        self.facts_prompt = _template_pattern(anah["facts.txt"])
        self.reference_prompt = _template_pattern(anah["reference.txt"])
        self.extract_prompt = _template_pattern(factscore["factscore_facts.txt"])
        self.judge_prompt = _template_pattern(factscore["factscore_judge.txt"])

    def reply(self, messages: list[dict]) -> str:
        first = messages[0]["content"]
        turn1 = self.facts_prompt.fullmatch(first)
        if turn1:
            sentence, topic = turn1["sentence"], topic_of(turn1["question"])
            if len(messages) == 1:
                return "<Facts Present>" if states_a_fact(sentence, topic) else "<No Facts>"
            reference = self.reference_prompt.fullmatch(messages[2]["content"])
            if reference is None:
                raise ValueError("the annotator's second turn is not the reference template")
            label = judge(sentence, topic, reference["reference"])
            if len(messages) == 3:  # the relevant passages: the article's sentence on that attribute
                fact = parse_fact(sentence)
                if label == "unverifiable" or fact is None:
                    return "<No Reference Information>"
                return FORMS[fact[0]].format(value=facts_of(reference["reference"])[fact[0]])
            return VERDICT_TAGS[label]
        extract = self.extract_prompt.fullmatch(first)
        if extract:
            text = extract["response"]
            facts = [text[a:b] for a, b in split_sentences(text, "en") if claimed_fact(text[a:b])]
            return "\n".join(f"- {f}" for f in facts) if facts else "No facts."
        judged = self.judge_prompt.fullmatch(first)
        if judged:
            fact = claimed_fact(judged["fact"])
            known = facts_of(judged["passages"])  # the topic's passages: facts about the topic
            return "True" if fact and known.get(fact[0]) == fact[1] else "False"
        raise ValueError(f"not a prompt the oracle knows: {first[:80]!r}")


class OracleServer:
    """The oracle on 127.0.0.1 (a free port), speaking OpenAI's chat completions:

        with OracleServer() as server:
            server.url      # http://127.0.0.1:PORT/v1, for --annotator-base-url
    A prompt it does not know is answered 400 with the reason (the client then fails at once)."""

    def __init__(self):
        self.oracle = Oracle()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    text = server.oracle.reply(body["messages"])
                except (ValueError, KeyError, IndexError) as e:
                    return self._send(400, json.dumps({"error": {"message": str(e)}}).encode())
                payload = {"id": "oracle", "object": "chat.completion", "created": 0, "model": body.get("model"),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
                self._send(200, json.dumps(payload).encode())

            def _send(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
