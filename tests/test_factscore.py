"""`maskdpo evaluate --metric factscore` against a real loopback server: facts extracted, judged
against the bundled knowledge source, scored as computed here by hand."""

import json
import math
import re

import pytest
from chat_server import ChatServer

from maskdpo.assets import DATA
from maskdpo.cli import main
from maskdpo.loop.factscore import parse_facts, parse_verdict

# The policy's answers, and the facts the extractor returns for each (some not in the knowledge).
ANSWERS = {
    "Ada Lovelace": ["She was born in 1815 in London.", "She worked with Charles Babbage."],
    "Carl Linnaeus": ["He was born in 1707 in Rashult, Sweden.", "He was a painter.", "He invented the telescope.",
                      "He lived in Paris."],
    "Ida Tarbell": None,  # abstains
    "Nikola Tesla": ["He was born in 1856 in Smiljan.", "He moved to the United States in 1884.",
                     "He died in 1943 in New York City."],
}


def reply(body):
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("Tell me a bio of "):
        topic = prompt[len("Tell me a bio of "):-1]
        facts = ANSWERS[topic]
        return f"I'm sorry, I could not find information about {topic}." if facts is None else " ".join(facts)
    if prompt.startswith("List every atomic fact"):
        topic = re.search(r"about (.+?)\. An atomic", prompt).group(1)
        return "Here are the facts:\n" + "\n".join(f"- {fact}" for fact in ANSWERS[topic])
    if "True or False?" in prompt:  # a judge that reads its passages: supported iff the fact is in them
        fact = re.search(r"Input: (.+) True or False\?", prompt).group(1)
        passages = prompt.split("Text: ", 1)[1].split("\n\nInput:")[0]
        return "True" if fact.rstrip(".") in passages else "False"
    raise AssertionError(prompt)


def expected():
    per_response = [(2, 2), (1, 4), (3, 3)]  # (supported, facts) of the three responding answers
    plain = [s / n for s, n in per_response]
    penalised = [s / n * math.exp(1 - 10 / n) for s, n in per_response]
    return {"factscore": 100 * sum(plain) / 3, "factscore_penalised": 100 * sum(penalised) / 3,
            "pooled": 100 * 6 / 9, "respond_ratio": 3 / 4, "facts_per_response": 3.0, "responses": 4}


@pytest.fixture
def evaluated(tmp_path):
    with ChatServer(reply) as server:
        args = ["evaluate", "--metric", "factscore", "--questions", str(DATA / "bio_prompts.jsonl"),
                "--knowledge", str(DATA / "knowledge.jsonl"), "--output", str(tmp_path / "eval"),
                "--cache-dir", str(tmp_path / "cache"), "--base-url", server.url, "--model", "policy",
                "--annotator-model", "judge", "--concurrency", "2"]
        assert main(args) == 0
        yield tmp_path, args, server


def test_scores_match_the_hand_computation(evaluated):
    tmp_path, _, server = evaluated
    result = json.loads((tmp_path / "eval" / "factscore.json").read_text())
    for key, value in expected().items():
        assert result["all"][key] == pytest.approx(value), key
    assert result["Carl Linnaeus"]["factscore"] == pytest.approx(25.0)
    assert result["Ida Tarbell"]["respond_ratio"] == 0 and result["Ida Tarbell"]["factscore"] is None
    assert "| all | 75.00 |" in (tmp_path / "eval" / "factscore.md").read_text()
    # The abstaining answer cost no extraction request; every fact was judged once, by the judge model.
    judged = [b for b in server.requests if "True or False?" in b["messages"][-1]["content"]]
    assert len(judged) == 9 and {b["model"] for b in judged} == {"judge"}
    assert list((tmp_path / "cache").glob("knowledge-*.sqlite"))


def test_a_rerun_resumes_and_another_judge_is_refused(evaluated, capsys):
    tmp_path, args, server = evaluated
    before = len(server.requests)
    assert main(args) == 0
    assert len(server.requests) == before  # everything was done: no request made again
    capsys.readouterr()
    other = [a if a != "judge" else "another-judge" for a in args]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "facts.jsonl:1" in err and "another-judge" in err


def test_compare(evaluated, capsys):
    tmp_path, _, _ = evaluated
    capsys.readouterr()
    assert main(["evaluate", "--metric", "factscore", "--compare", str(tmp_path / "eval"), str(tmp_path / "eval")]) == 0
    assert "| all | 75.00 | 75.00 | +0.00 |" in capsys.readouterr().out


def test_reply_parsing():
    assert parse_facts("Facts:\n- One.\n* Two.\n3. Three.\nnot a fact\n-  ") == ["One.", "Two.", "Three."]
    assert parse_verdict("True") is True and parse_verdict("false.") is False
    assert parse_verdict("Not true; the answer is False") is False and parse_verdict("maybe") is None
