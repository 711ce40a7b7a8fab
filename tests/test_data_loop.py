"""sample / annotate / evaluate / prepare against a real loopback HTTP server and the real openai client."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chat_server import ChatServer

from maskdpo.cli import main
from maskdpo.loop.annotate import FACTS, VERDICTS, annotate, load_templates, parse_tag
from maskdpo.loop.client import ChatClient, ServerConfig
from maskdpo.loop.evaluate import compare, score, write_results
from maskdpo.loop.sample import SamplingConfig, sample_local, sample_server

QUESTIONS = [{"question_id": f"q{i}", "question": f"Tell me about topic {i}.", "topic": f"topic {i}",
              "language": "en", "reference": f"Topic {i} is old. Topic {i} is big."} for i in range(6)]


def write_questions(path, questions=QUESTIONS):
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


def policy_reply(body):
    question = body["messages"][-1]["content"]
    return f"Great question! {question.replace('Tell me about ', '').rstrip('.')} is old. It is tiny."


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_sampling_is_concurrent_retries_failures_and_records_settings(tmp_path):
    with ChatServer(policy_reply, delay=0.1, timeout_sleep=1.5) as server:
        server.failures = ["500", "500", "timeout", "malformed"]
        client = ChatClient(ServerConfig(server.url, "policy", timeout=0.5, max_retries=6, backoff=0.01))
        report = sample_server(QUESTIONS, tmp_path / "s.jsonl", client, SamplingConfig(samples=2), concurrency=4)
    records = lines(tmp_path / "s.jsonl")
    assert report.done == 12 and not report.failed
    expected = sorted((q["question_id"], k) for q in QUESTIONS for k in range(2))
    assert sorted((r["question_id"], r["sample_id"]) for r in records) == expected
    assert 2 <= server.max_in_flight <= 4
    assert client.retried >= 4
    assert records[0]["sampling"] == {"source": server.url, "model": "policy", "temperature": 0.8, "top_k": 40,
                                      "top_p": 1.0, "max_tokens": 1024}
    assert all(b["temperature"] == 0.8 and b["top_k"] == 40 and b["top_p"] == 1.0 for b in server.requests)


def test_an_empty_reply_is_retried_and_never_stored(tmp_path):
    with ChatServer(policy_reply) as server:
        server.failures = ["empty", "empty"]
        client = ChatClient(ServerConfig(server.url, "policy", max_retries=3, backoff=0.001))
        report = sample_server(QUESTIONS[:2], tmp_path / "s.jsonl", client, SamplingConfig(samples=1), concurrency=1)
    assert report.done == 2 and not report.failed and client.retried == 2
    assert all(r["response"].strip() for r in lines(tmp_path / "s.jsonl"))
    with ChatServer(policy_reply) as server:  # only empty replies: reported as failed, nothing written
        server.failures = ["empty"] * 10
        client = ChatClient(ServerConfig(server.url, "policy", max_retries=2, backoff=0.001))
        report = sample_server(QUESTIONS[2:3], tmp_path / "t.jsonl", client, SamplingConfig(samples=1), concurrency=1)
    assert report.done == 0 and "the server's reply is empty" in report.failed[0][1]
    assert not lines(tmp_path / "t.jsonl")


def test_a_request_that_never_succeeds_is_reported_not_written(tmp_path):
    with ChatServer(policy_reply) as server:
        server.failures = ["500"] * 50
        client = ChatClient(ServerConfig(server.url, "policy", max_retries=2, backoff=0.001))
        report = sample_server(QUESTIONS[:1], tmp_path / "s.jsonl", client, SamplingConfig(samples=1), concurrency=1)
    assert report.done == 0 and len(report.failed) == 1 and "rerun to continue" in report.summary("x")
    assert not lines(tmp_path / "s.jsonl")


@pytest.mark.slow
def test_killed_sampling_resumes_without_loss_or_duplicates(tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS * 1)
    out = tmp_path / "s.jsonl"
    with ChatServer(policy_reply, delay=0.3) as server:
        command = [sys.executable, "-m", "maskdpo.cli", "sample", "--questions", str(questions), "--output", str(out),
                   "--base-url", server.url, "--model", "policy", "--samples", "3", "--concurrency", "2"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with open(out, "a") as f:
            f.write('{"question_id": "q5", "sample_')  # a line cut short by the kill
        done_before = len(lines_prefix(out))
        assert 4 <= done_before < 18
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} already done" in rerun.stdout
    keys = [(r["question_id"], r["sample_id"]) for r in lines(out)]
    assert len(keys) == 18 == len(set(keys))


# The console command, and maskdpo.cli.main() called as a library by a script that then ends: neither
# the call nor the script's exit waits for the abandoned requests.
LIBRARY_CALL = ("import sys, time; from maskdpo.cli import main\n"
                "status = main(sys.argv[1:]); print('main returned', status, time.time(), flush=True)\n")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["console", "library"])
def test_ctrl_c_with_requests_in_flight_exits_at_once_keeping_what_finished(tmp_path, how):
    questions = write_questions(tmp_path / "q.jsonl")
    out = tmp_path / "s.jsonl"
    served = []

    def slow_after_two(body):  # two quick answers, then requests that would take a minute each
        served.append(1)
        if len(served) > 2:
            server.closed.wait(60)  # returns when the server closes at the end of the test
        return policy_reply(body)

    with ChatServer(slow_after_two) as server:
        start = [sys.executable, "-m", "maskdpo.cli"] if how == "console" else [sys.executable, "-c", LIBRARY_CALL]
        command = [*start, "sample", "--questions", str(questions), "--output", str(out),
                   "--base-url", server.url, "--model", "policy", "--samples", "2", "--concurrency", "3",
                   "--timeout", "120"]
        # SIGINT as a terminal's Ctrl-C finds it, even when this test runs under a shell that ignores it
        # (a background job of a non-interactive shell): an ignored SIGINT is inherited across exec.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2
                                          or server.in_flight < 3):
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        started = time.time()
        stdout, stderr = process.communicate(timeout=30)
        assert time.time() - started < 10, "Ctrl-C waited for the requests in flight"
    if how == "library":
        returned = [line.split() for line in stdout.splitlines() if line.startswith("main returned")]
        assert returned and returned[0][2] == "130", stdout[-2000:] + stderr[-2000:]
        assert float(returned[0][3]) - started < 10
        assert process.returncode == 0, stderr[-2000:]  # the script ended on its own, nobody killed it
    else:
        assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert len(lines(out)) == 2 and all(r["response"] for r in lines(out))


def lines_prefix(path):
    good = []
    for line in Path(path).read_text().splitlines():
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return good


# --- annotation -------------------------------------------------------------------------------

TRUTH = {"Great question!": "nofact", "topic 0 is old.": "ok", "It is tiny.": "contradictory",
         "topic 1 is old.": "ok", "topic 2 is old.": "unverifiable", "topic 3 is old.": "garbled"}


def annotator_reply(body):
    text = body["messages"][-1]["content"]
    sentence = text.split('"')[1] if '"' in text else text.split("Sentence to check: ")[1].split("\n")[0]
    truth = TRUTH.get(sentence, "ok")
    if "verifiable facts" in text:
        return "<No Facts>" if truth == "nofact" else "**<facts present>**"
    if "reference document" in text:
        return "Topic is old." if truth != "unverifiable" else "<No Reference Information>"
    return {"ok": "The sentence is supported. <No Hallucination>", "contradictory": "<Contradictory>",
            "unverifiable": "verdict: unverifiable", "garbled": "I am not sure what to say."}[truth]


def test_annotation_dialogue_labels_and_unparsed(tmp_path):
    samples = [{"question_id": f"q{i}", "sample_id": 0, "language": "en", "prompt": [{"role": "user", "content": "x"}],
                "response": f"Great question! topic {i} is old. It is tiny."} for i in range(4)]
    with ChatServer(annotator_reply) as server:
        server.failures = ["malformed", "500"]
        client = ChatClient(ServerConfig(server.url, "anah-v2", backoff=0.001))
        report = annotate(samples, {q["question_id"]: q for q in QUESTIONS}, tmp_path / "a.jsonl", client,
                          load_templates(), concurrency=3)
    assert report.done == 4
    records = {r["question_id"]: r for r in lines(tmp_path / "a.jsonl")}
    labels = {q: [s["label"] for s in r["sentences"]] for q, r in records.items()}
    assert labels == {"q0": ["nofact", "ok", "contradictory"], "q1": ["nofact", "ok", "contradictory"],
                      "q2": ["nofact", "unverifiable", "contradictory"], "q3": ["nofact", "unverifiable", "contradictory"]}
    assert [s.get("unparsed", False) for s in records["q3"]["sentences"]] == [False, True, False]
    text = records["q0"]["response"]
    assert [text[s["start"]:s["end"]] for s in records["q0"]["sentences"]] == [
        "Great question!", "topic 0 is old.", "It is tiny."]
    # The three turns: facts, reference, verdict; the reference document reached the annotator.
    dialogue = next(b["messages"] for b in server.requests if len(b.get("messages", [])) == 5)
    assert "Topic 0 is old. Topic 0 is big." in dialogue[2]["content"] or "is big." in dialogue[2]["content"]


def test_resuming_annotation_with_other_templates_is_refused(tmp_path):
    """Labels judged with other prompts are never mixed into one file: the rerun names the file and line."""
    import shutil

    from maskdpo.data import RecordError
    from maskdpo.loop.annotate import TEMPLATES

    samples = [{"question_id": f"q{i}", "sample_id": 0, "language": "en", "prompt": [{"role": "user", "content": "x"}],
                "response": f"topic {i} is old."} for i in range(2)]
    edited = tmp_path / "templates"
    shutil.copytree(TEMPLATES, edited)
    (edited / "judge.txt").write_text((edited / "judge.txt").read_text() + "\nBe strict.")
    out = tmp_path / "a.jsonl"
    with ChatServer(annotator_reply) as server:
        client = ChatClient(ServerConfig(server.url, "anah-v2", backoff=0.001))
        questions = {q["question_id"]: q for q in QUESTIONS}
        assert annotate(samples[:1], questions, out, client, load_templates(), concurrency=1).done == 1
        before = out.read_text()
        with pytest.raises(RecordError, match=r"a.jsonl:1: written by a run with other settings \(annotator"):
            annotate(samples, questions, out, client, load_templates(edited), concurrency=1)
        assert out.read_text() == before
        assert annotate(samples, questions, out, client, load_templates(), concurrency=1).done == 1  # same: resumes


@pytest.mark.parametrize("reply,tags,label", [
    ("<No Hallucination>", VERDICTS, "ok"), ("no_hallucination", VERDICTS, "ok"),
    ("**<Contradictory>**", VERDICTS, "contradictory"),
    ("The answer: < Unverifiable >", VERDICTS, "unverifiable"), ("hmm", VERDICTS, None),
    ("<No Facts>", FACTS, "nofact"), ("<Facts Present>", FACTS, "facts"),
    ("not <Contradictory> but <No Hallucination>", VERDICTS, "ok"),
    ("Nothing contradictory here. <No Hallucination>", VERDICTS, "ok"),
    ("Options: <No Hallucination>, <Contradictory>, <Unverifiable>. Answer: <Contradictory>", VERDICTS, "contradictory"),
    ("between <Facts Present> and <No Facts>: <No Facts>", FACTS, "nofact"),
    # ANAH-v2's Chinese tags, bracketed only (the plain-words fallback is English).
    ("<有事实>", FACTS, "facts"), ("**<无事实>**", FACTS, "nofact"), ("<无幻觉>", VERDICTS, "ok"),
    ("< 矛盾 >", VERDICTS, "contradictory"), ("<无法验证>", VERDICTS, "unverifiable"),
    ("<无幻觉> 不对，<矛盾>", VERDICTS, "contradictory"), ("无幻觉", VERDICTS, None), ("有事实", FACTS, None),
])
def test_reply_parsing_is_robust(reply, tags, label):
    assert parse_tag(reply, tags) == label


# --- evaluation -------------------------------------------------------------------------------

def annotated(language, labels, unparsed=()):
    return {"question_id": "q", "sample_id": 0, "language": language, "prompt": [], "response": "",
            "sentences": [{"start": 0, "end": 1, "label": l, **({"unparsed": True} if i in unparsed else {})}
                          for i, l in enumerate(labels)]}


def test_evaluate_exact_scores_and_compare(tmp_path):
    records = [annotated("en", ["ok", "nofact", "contradictory", "ok"]),
               annotated("en", ["unverifiable", "ok"], unparsed=(0,)),
               annotated("zh", ["ok", "ok", "contradictory", "unverifiable"])]
    result = score(records)
    # all: correct = 3 + 1 + 2 = 6 of 10; en 4/6; zh 2/4
    assert result["all"]["anah_score"] == pytest.approx(60.0)
    assert (result["all"]["correct"], result["all"]["incorrect"], result["all"]["unparsed"]) == (6, 4, 1)
    assert result["en"]["anah_score"] == pytest.approx(400 / 6) and result["zh"]["anah_score"] == pytest.approx(50.0)
    assert result["all"]["sentences_per_response"] == pytest.approx(10 / 3)
    write_results(result, tmp_path / "a")
    better = score([annotated("en", ["ok", "ok", "ok", "contradictory"])])
    write_results(better, tmp_path / "b")
    table = compare(tmp_path / "a", tmp_path / "b")
    assert "| all | 60.00 | 75.00 | +15.00 | -3 | -6 |" in table
    assert "| all | 60.00 |" in (tmp_path / "a" / "eval.md").read_text()


def test_evaluate_and_prepare_commands_end_to_end(tmp_path, capsys):
    questions = write_questions(tmp_path / "q.jsonl")

    def both(body):  # one server, two models: the policy samples, the annotator judges
        return policy_reply(body) if body["model"] == "policy" else annotator_reply(body)

    with ChatServer(both) as server:
        common = ["--base-url", server.url, "--model", "policy", "--annotator-base-url", server.url,
                  "--annotator-model", "anah", "--questions", str(questions)]
        assert main(["evaluate", *common, "--output", str(tmp_path / "eval")]) == 0
        greedy = [b for b in server.requests if b["model"] == "policy"]
        assert len(greedy) == len(QUESTIONS) and all(b["temperature"] == 0 and "top_k" not in b for b in greedy)
        result = json.loads((tmp_path / "eval" / "eval.json").read_text())
        assert result["all"]["responses"] == len(QUESTIONS) and result["all"]["sentences"] == 3 * len(QUESTIONS)
        assert main(["prepare", *common, "--output", str(tmp_path / "prep"), "--samples", "2",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "ready to train" in out and (tmp_path / "prep" / "pairs.jsonl").exists()


def test_local_transformers_sampling(tmp_path):
    from model_helpers import tiny_hf_llama

    from maskdpo.data import load_tokenizer

    tiny_hf_llama(tmp_path / "model", vocab_size=4096)
    load_tokenizer().save_pretrained(str(tmp_path / "model"))
    config = SamplingConfig(samples=2, temperature=0.8, max_tokens=6)
    report = sample_local(QUESTIONS[:2], tmp_path / "s.jsonl", tmp_path / "model", config)
    assert report.done == 4
    greedy = SamplingConfig(samples=1, temperature=0.0, max_tokens=6)
    sample_local(QUESTIONS[:1], tmp_path / "g1.jsonl", tmp_path / "model", greedy)
    sample_local(QUESTIONS[:1], tmp_path / "g2.jsonl", tmp_path / "model", greedy)
    assert lines(tmp_path / "g1.jsonl")[0]["response"] == lines(tmp_path / "g2.jsonl")[0]["response"]
    assert lines(tmp_path / "s.jsonl")[0]["sampling"]["source"] == "local"
    # It stops at the chat template's end of turn too, not only at the tokenizer's end of sequence
    # (the bundled tokenizer's is <|end_of_text|>, its template ends turns with <|eot_id|>).
    import transformers

    from maskdpo.loop.sample import stop_tokens

    tokenizer = load_tokenizer()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    expected = {tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.convert_tokens_to_ids("<|end_of_text|>")}
    assert expected <= set(stop_tokens(model, tokenizer))


def test_braces_in_responses_and_documents_reach_the_annotator_verbatim(tmp_path):
    from maskdpo.loop.annotate import fill

    assert fill("Q: {question} / {sentence}", {"question": "f(x) = {x: 1}", "sentence": "{sentence}"}) == \
        "Q: f(x) = {x: 1} / {sentence}"
    samples = [{"question_id": "q0", "sample_id": 0, "language": "en", "prompt": [{"role": "user", "content": "x"}],
                "response": "Use {braces} here. It is {tiny}."}]
    with ChatServer(annotator_reply) as server:
        client = ChatClient(ServerConfig(server.url, "anah", backoff=0.001))
        report = annotate(samples, {"q0": {**QUESTIONS[0], "reference": "A {json: doc}"}}, tmp_path / "a.jsonl",
                          client, load_templates(), concurrency=1)
    assert report.done == 1 and any("{json: doc}" in m["content"] for b in server.requests for m in b["messages"])


def test_resume_refuses_other_settings_and_damaged_files(tmp_path):
    from maskdpo.data import RecordError

    out = tmp_path / "s.jsonl"
    with ChatServer(policy_reply) as server:
        client = ChatClient(ServerConfig(server.url, "policy", backoff=0.001))
        sample_server(QUESTIONS[:2], out, client, SamplingConfig(samples=1), concurrency=2)
        other = ChatClient(ServerConfig(server.url, "other-model", backoff=0.001))
        with pytest.raises(RecordError, match=r"s.jsonl:1: written by a run with other settings \(model: 'policy' then"):
            sample_server(QUESTIONS[:2], out, other, SamplingConfig(samples=1), concurrency=2)
        good = out.read_text().splitlines()
        out.write_text(good[0] + "\n{broken\n" + good[1] + "\n")
        with pytest.raises(RecordError, match=r"s.jsonl:2: not a complete record"):
            sample_server(QUESTIONS[:2], out, client, SamplingConfig(samples=1), concurrency=2)
        out.write_text(good[0] + "\n" + good[1])  # complete, but no final newline
        report = sample_server(QUESTIONS[:3], out, client, SamplingConfig(samples=1), concurrency=2)
    assert report.already_done == 2 and report.done == 1 and len(lines(out)) == 3


def test_a_dead_server_stops_the_run_early(tmp_path):
    from maskdpo.loop import jobs

    client = ChatClient(ServerConfig("http://127.0.0.1:9/v1", "policy", timeout=0.2, max_retries=0))
    report = sample_server(QUESTIONS * 5, tmp_path / "s.jsonl", client, SamplingConfig(samples=2), concurrency=2)
    assert report.stopped and "failed in a row" in report.stopped
    assert len(report.failed) < len(QUESTIONS) * 10 and len(report.failed) >= jobs.CONSECUTIVE_FAILURES_TO_STOP


def test_annotator_model_alone_selects_the_annotator(tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])

    def both(body):
        return policy_reply(body) if body["model"] == "policy" else annotator_reply(body)

    with ChatServer(both) as server:
        assert main(["evaluate", "--base-url", server.url, "--model", "policy", "--annotator-model", "anah",
                     "--questions", str(questions), "--output", str(tmp_path / "eval")]) == 0
    annotator_requests = [b for b in server.requests if len(b["messages"]) > 1 or "verifiable" in b["messages"][0]["content"]]
    assert {b["model"] for b in annotator_requests} == {"anah"}
    assert all(r["annotator"]["model"] == "anah" for r in lines(tmp_path / "eval" / "annotated.jsonl"))


def test_duplicate_samples_given_to_annotate_are_an_error_naming_both_lines(tmp_path, capsys):
    questions = write_questions(tmp_path / "q.jsonl")
    sample = {"question_id": "q0", "sample_id": 0, "prompt": [{"role": "user", "content": "Tell me about topic 0."}],
              "response": "Topic 0 is old."}
    other = dict(sample, response="Topic 0 is new.")
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in (sample, dict(sample, sample_id=1), other)))
    with ChatServer(policy_reply) as server:
        code = main(["annotate", "--samples", str(samples), "--questions", str(questions), "--output",
                     str(tmp_path / "a.jsonl"), "--base-url", server.url, "--model", "anah"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{samples}:3: sample_id: duplicate sample (question_id 'q0', sample_id '0'), first on line 1" in err
    assert not server.requests
