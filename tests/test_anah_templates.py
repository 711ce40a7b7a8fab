"""`maskdpo annotate-templates` and ANAH-v2's protocol in `maskdpo annotate`.

The independent reference is a stand-in anahv2_prompt.py written here: the three functions of
ANAH-v2's file with their signatures and our own short wording (English and Chinese branches, with
the indentation and trailing spaces of triple-quoted f-strings). Converted, the template files must
hold exactly what the functions return for the placeholders; annotating with them against a real
loopback server scripted like ANAH-v2, every request must hold exactly what the functions return
for the real question, sentence, document and turn-2 reply, in the sample's language.
"""

import importlib.util
import json
import re

import pytest
from chat_server import ChatServer

from maskdpo.cli import main
from maskdpo.loop.annotate import NO_REFERENCE, fill, load_templates, parse_tag, pick_template, read_templates

STAND_IN = '''
def fact_check_prompt(question, annotation, language):
    zh = f"""
    事实检查。问题：{question}
    句子：{annotation}
    有可核查的事实就输出<有事实>，否则输出<无事实>。␠
    """
    en = f"""
    FACT CHECK. Question: {question}
    Sentence: {annotation}
    Output <Facts Present> if it states checkable facts, else <No Facts>; {{braces}} stay.␠
    """
    return zh if language == "zh" else en


def reference_check_prompt(question, reference, annotation, language):
    zh = f"""
    摘录。问题：{question}
    句子：{annotation}
    文档：
    {reference}
    摘出相关段落，以 <SEP> 分隔；没有就输出<无参考信息>。
    """
    en = f"""
    EXTRACT. Question: {question}
    Sentence: {annotation}
    Document:
    {reference}
    Copy the relevant passages, separated by <SEP>; if there are none, output <No Reference Information>.
    """
    return zh if language == "zh" else en


def hallucination_check_prompt(question, reference, annotation, language):
    zh = f"""
    判断。问题：{question}
    句子：{annotation}
    要点：{reference}␠
    输出<无幻觉>、<矛盾>或<无法验证>。
    """
    en = f"""
    JUDGE. Question: {question}
    Sentence: {annotation}
    Points: {reference}␠
    Output <No Hallucination>, <Contradictory> or <Unverifiable>.
    """
    return zh if language == "zh" else en
'''.replace("␠", " ")  # trailing spaces, as in triple-quoted prompts

PLACEHOLDERS = {"facts": ("fact_check_prompt", ("{question}", "{sentence}")),
                "reference": ("reference_check_prompt", ("{question}", "{reference}", "{sentence}")),
                "judge": ("hallucination_check_prompt", ("{question}", "{passages}", "{sentence}"))}


def stand_in(tmp_path, text=STAND_IN, name="anahv2_prompt.py"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path):
    spec = importlib.util.spec_from_file_location("reference_prompts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert(capsys, *args):
    code = main(["annotate-templates", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_converted_templates_are_exactly_what_the_functions_return(tmp_path, capsys):
    prompts = stand_in(tmp_path)
    code, out, err = convert(capsys, "--anah-prompts", prompts, "-o", tmp_path / "t")
    assert code == 0, err
    reference = load(prompts)
    written = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert written == sorted(f"{stem}{infix}.txt" for stem in PLACEHOLDERS for infix in ("", ".zh"))
    for stem, (function, arguments) in PLACEHOLDERS.items():
        for language, infix in (("en", ""), ("zh", ".zh")):
            expected = getattr(reference, function)(*arguments, language)
            assert (tmp_path / "t" / f"{stem}{infix}.txt").read_bytes() == expected.encode("utf-8")
            assert f"wrote {tmp_path / 't' / f'{stem}{infix}.txt'}" in out
    templates = load_templates(tmp_path / "t")
    assert templates["judge.zh.txt"].startswith("\n    判断。") and " \n    输出" in templates["judge.zh.txt"]
    assert "{braces} stay. \n" in templates["facts.txt"]  # the f-string's result, not its source
    # Converting again is a no-op; other text is refused, then overwritten with --force.
    code, out, _ = convert(capsys, "--anah-prompts", prompts, "-o", tmp_path / "t")
    assert code == 0 and out.count("unchanged ") == 6


# --- annotation with the converted templates against a loopback server scripted like ANAH-v2 ---

QUESTIONS = {"en1": {"question_id": "en1", "question": "What is Paris?", "language": "en", "topic": "Paris",
                     "reference": "Paris is the capital of France. It has {many} museums."},
             "zh1": {"question_id": "zh1", "question": "巴黎是什么？", "language": "zh", "topic": "巴黎",
                     "reference": "巴黎是法国的首都，有许多博物馆。"}}
SENTENCES = {  # sentence -> what the annotator finds
    "en1": {"Hello there!": "nofact", "Paris is the capital of France.": "ok", "Paris has ten million cats.": "contradictory",
            "Paris hosted a moon landing.": "unverifiable", "Paris is on Mars.": "noref"},
    "zh1": {"你好！": "nofact", "巴黎是法国的首都。": "ok", "巴黎有一千万只猫。": "contradictory",
            "巴黎举办过登月。": "unverifiable", "巴黎在火星上。": "noref"},
}
REPLIES = {  # (language, turn, truth) -> reply; turn 2 of a sentence with reference text: passages()
    ("en", "facts", "nofact"): "<No Facts>", ("en", "facts", "facts"): "<Facts Present>",
    ("en", "reference", "noref"): "**<No_Reference information>**",
    ("en", "judge", "ok"): "<No Hallucination>", ("en", "judge", "contradictory"): "<Contradictory>",
    ("en", "judge", "unverifiable"): "<Unverifiable>",
    ("zh", "facts", "nofact"): "<无事实>", ("zh", "facts", "facts"): "<有事实>", ("zh", "reference", "noref"): "<无参考信息>",
    ("zh", "judge", "ok"): "<无幻觉>", ("zh", "judge", "contradictory"): "**<矛盾>**",
    ("zh", "judge", "unverifiable"): "< 无法验证 >",
}
TURNS = {"FACT CHECK": ("en", "facts"), "EXTRACT": ("en", "reference"), "JUDGE": ("en", "judge"),
         "事实检查": ("zh", "facts"), "摘录": ("zh", "reference"), "判断": ("zh", "judge")}


def passages(sentence):
    """Turn 2's reply: passages (with braces that must stay literal in the judge prompt)."""
    return f"About {sentence} <SEP> kept as written: {{sentence}} {{reference}} {{passages}}"


def anah_v2(body):
    prompt = body["messages"][-1]["content"]
    language, turn = next(TURNS[h] for h in TURNS if prompt.lstrip().startswith(h))
    sentence = re.search(r"(?:Sentence: |句子：)(.*)", prompt).group(1)
    truth = {**SENTENCES["en1"], **SENTENCES["zh1"]}[sentence]
    if turn == "facts":
        return REPLIES[language, turn, "nofact" if truth == "nofact" else "facts"]
    if turn == "reference":
        return REPLIES[language, turn, "noref"] if truth == "noref" else passages(sentence)
    return REPLIES[language, turn, truth]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_annotate_follows_anah_v2_in_each_samples_language(tmp_path, capsys):
    prompts = stand_in(tmp_path)
    assert convert(capsys, "--anah-prompts", prompts, "-o", tmp_path / "t")[0] == 0
    samples = write_jsonl(tmp_path / "s.jsonl", [
        {"question_id": qid, "sample_id": 0, "language": QUESTIONS[qid]["language"],
         "prompt": [{"role": "user", "content": QUESTIONS[qid]["question"]}],
         "response": (" " if qid == "en1" else "").join(SENTENCES[qid])} for qid in QUESTIONS])
    questions = write_jsonl(tmp_path / "q.jsonl", QUESTIONS.values())
    with ChatServer(anah_v2) as server:
        code = main(["annotate", "--samples", str(samples), "--questions", str(questions), "--output",
                     str(tmp_path / "a.jsonl"), "--templates", str(tmp_path / "t"), "--base-url", server.url,
                     "--model", "anah-v2", "--concurrency", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "unparsed annotator replies (counted as unverifiable): 0" in out
    records = {r["question_id"]: r for r in map(json.loads, (tmp_path / "a.jsonl").read_text("utf-8").splitlines())}
    for qid, truths in SENTENCES.items():
        record = records[qid]
        assert [record["response"][s["start"]:s["end"]] for s in record["sentences"]] == list(truths)
        assert [s["label"] for s in record["sentences"]] == ["nofact", "ok", "contradictory", "unverifiable",
                                                             "unverifiable"]
        assert not any(s.get("unparsed") for s in record["sentences"])

    # Every request is a prefix of ANAH-v2's dialogue for its sentence, in its sample's language,
    # built by the reference functions from the real values; turn 3 gets turn 2's reply.
    reference = load(prompts)
    requests: dict[str, int] = {}
    for body in server.requests:
        messages = body["messages"]
        qid = "zh1" if messages[0]["content"].lstrip().startswith("事实检查") else "en1"
        q, language = QUESTIONS[qid], QUESTIONS[qid]["language"]
        sentence = re.search(r"(?:Sentence: |句子：)(.*)", messages[0]["content"]).group(1)
        assert sentence in SENTENCES[qid]
        truth = SENTENCES[qid][sentence]
        reply1 = REPLIES[language, "facts", "nofact" if truth == "nofact" else "facts"]
        reply2 = REPLIES[language, "reference", "noref"] if truth == "noref" else passages(sentence)
        dialogue = [{"role": "user", "content": reference.fact_check_prompt(q["question"], sentence, language)},
                    {"role": "assistant", "content": reply1},
                    {"role": "user", "content": reference.reference_check_prompt(q["question"], q["reference"], sentence,
                                                                                 language)},
                    {"role": "assistant", "content": reply2},
                    {"role": "user", "content": reference.hallucination_check_prompt(q["question"], reply2, sentence,
                                                                                     language)}]
        assert messages == dialogue[:len(messages)], (qid, sentence)
        requests[sentence] = max(requests.get(sentence, 0), len(messages))
        if len(messages) == 5:
            assert reply2 in messages[4]["content"] and q["reference"] not in messages[4]["content"]
            assert "{sentence} {reference} {passages}" in messages[4]["content"]
    # nofact: 1 request; no reference information: 2 (no third); the others: 3.
    turns = {"nofact": 1, "noref": 3, "ok": 5, "contradictory": 5, "unverifiable": 5}
    assert requests == {s: turns[t] for truths in SENTENCES.values() for s, t in truths.items()}
    assert len(server.requests) == 2 * (1 + 2 + 3 * 3)
    zh_requests = [b for b in server.requests if "巴黎" in b["messages"][0]["content"]]
    assert len(zh_requests) == 12
    assert all(m["content"].lstrip()[:2] in ("事实", "摘录", "判断") for b in zh_requests for m in b["messages"]
               if m["role"] == "user")


@pytest.mark.parametrize("reply,stops", [
    ("<No Reference Information>", True), ("**<no_reference  information>**", True), ("< 无参考信息 >", True),
    ("There is no reference information.", True), ("<SEP>\nParis is a city.", False),
    ("Paris is in France. <SEP> It has museums.", False), ("无参考信息", False),
])
def test_no_reference_information_is_read_like_every_tag(reply, stops):
    assert bool(parse_tag(reply, NO_REFERENCE)) is stops


def test_language_variants_fill_and_passages(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    for name, text in {"facts.txt": "F {sentence}", "reference.txt": "R {reference}", "judge.txt": "J {passages}",
                       "facts.zh.txt": "事 {sentence}", "reference.zh.txt": "参 {reference}", "judge.zh.txt": "判 {passages}",
                       "notes.zh.txt": "not a template", "judge.txt~": "a backup"}.items():
        (d / name).write_text(text, encoding="utf-8")
    templates = load_templates(d)
    assert set(templates) == {"facts.txt", "reference.txt", "judge.txt", "facts.zh.txt", "reference.zh.txt",
                              "judge.zh.txt"}
    assert pick_template(templates, "judge.txt", "zh") == "判 {passages}"
    assert pick_template(templates, "judge.txt", "ZH") == "判 {passages}"
    assert pick_template(templates, "judge.txt", "fr") == pick_template(templates, "judge.txt") == "J {passages}"
    # A language's set must be complete.
    (d / "judge.fr.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"judge.fr.txt without facts.fr.txt, reference.fr.txt: a language's "
                                                r"annotation templates come as a set"):
        load_templates(d)
    (d / "judge.fr.txt").unlink()
    # {passages} is turn 2's reply: only judge templates can use it.
    (d / "reference.zh.txt").write_text("参 {passages}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"reference.zh.txt use \{passages\}, which only judge templates can"):
        load_templates(d)
    # Bytes as stored: a CRLF stays CRLF.
    (d / "reference.zh.txt").write_bytes("参\r\n{reference}".encode())
    assert load_templates(d)["reference.zh.txt"] == "参\r\n{reference}"
    # One pass: a value is never searched for placeholders.
    assert fill("{question} | {sentence}", {"question": "about {sentence}", "sentence": "S"}) == "about {sentence} | S"


def test_factscore_templates_still_load_with_variants(tmp_path):
    from maskdpo.assets import TEMPLATES
    from maskdpo.loop import factscore

    plain = factscore.load_templates()
    assert set(plain) == {"factscore_facts.txt", "factscore_judge.txt"}
    for name in plain:
        (tmp_path / name).write_text((TEMPLATES / name).read_text())
        (tmp_path / name.replace(".txt", ".zh.txt")).write_text("中文 " + name)
    (tmp_path / "facts.zh.txt").write_text("an annotation template: not FactScore's")
    templates = factscore.load_templates(tmp_path)
    assert templates["factscore_judge.txt"] == plain["factscore_judge.txt"]
    assert set(templates) == {*plain, "factscore_facts.zh.txt", "factscore_judge.zh.txt"}
    assert set(read_templates(None, ("facts.txt",), "x")) == {"facts.txt"}


# --- the converter's errors: one line each, status 2, nothing written ---------------------------

def without(function):
    """The stand-in without one of its functions."""
    return "\n\n\n".join(block for block in STAND_IN.split("\n\n\n") if f"def {function}(" not in block)


@pytest.mark.parametrize("text,message", [
    (None, r"nope\.py: no such file \(want eval/anah_v2/anahv2_prompt\.py of github\.com/open-compass/ANAH\)"),
    (without("reference_check_prompt"), r"anahv2_prompt\.py: no function reference_check_prompt\(\)"),
    (without("hallucination_check_prompt"), r"anahv2_prompt\.py: no function hallucination_check_prompt\(\)"),
    (STAND_IN.replace("return zh if language == \"zh\" else en\n\n\ndef reference",
                      "return [zh] if language == \"zh\" else en\n\n\ndef reference"),
     r"fact_check_prompt\('\{question\}', '\{sentence\}', 'zh'\) returned list, not a str"),
    (STAND_IN + "\ndef hallucination_check_prompt(question, reference, annotation, language):\n    return None\n",
     r"hallucination_check_prompt\('\{question\}', '\{passages\}', '\{sentence\}', 'en'\) returned NoneType, not a str"),
    (STAND_IN.replace("    {reference}\n    Copy", "    (no document)\n    Copy"),
     r"reference_check_prompt\('\{question\}', '\{reference\}', '\{sentence\}', 'en'\) returned a prompt without "
     r"\{reference\}"),
    (STAND_IN + "\ndef fact_check_prompt(question, annotation):\n    return question\n",
     r"fact_check_prompt\('\{question\}', '\{sentence\}', 'en'\) raised TypeError"),
    ("def fact_check_prompt(:\n", r"anahv2_prompt\.py: could not be imported \(SyntaxError"),
])
def test_converter_errors(tmp_path, capsys, text, message):
    prompts = tmp_path / "nope.py" if text is None else stand_in(tmp_path, text)
    code, out, err = convert(capsys, "--anah-prompts", prompts, "-o", tmp_path / "t")
    assert code == 2 and not out
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "t").exists()


def test_converter_refuses_other_templates_unless_forced(tmp_path, capsys):
    prompts = stand_in(tmp_path)
    out_dir = tmp_path / "t"
    out_dir.mkdir()
    (out_dir / "judge.zh.txt").write_text("ours", encoding="utf-8")
    (out_dir / "facts.txt").write_text(load(prompts).fact_check_prompt("{question}", "{sentence}", "en"), "utf-8")
    code, out, err = convert(capsys, "--anah-prompts", prompts, "-o", out_dir)
    assert code == 2 and err == f"error: {out_dir}: judge.zh.txt already there with other text: not overwritten " \
                                "(--force to overwrite)\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["facts.txt", "judge.zh.txt"]  # nothing written
    assert (out_dir / "judge.zh.txt").read_text("utf-8") == "ours"
    code, out, err = convert(capsys, "--anah-prompts", prompts, "-o", out_dir, "--force")
    assert code == 0, err
    assert f"overwrote {out_dir / 'judge.zh.txt'}" in out and f"unchanged {out_dir / 'facts.txt'}" in out
    assert f"wrote {out_dir / 'reference.txt'}" in out
    assert (out_dir / "judge.zh.txt").read_text("utf-8").startswith("\n    判断。")
    # A file in the way of the directory.
    (tmp_path / "file").write_text("x")
    code, _, err = convert(capsys, "--anah-prompts", prompts, "-o", tmp_path / "file")
    assert code == 2 and err == f"error: {tmp_path / 'file'}: not a directory\n"


def test_bundled_reference_template_asks_for_the_early_stop_tag():
    templates = load_templates()
    assert "<No Reference Information>" in templates["reference.txt"]
    assert set(templates) == {"facts.txt", "reference.txt", "judge.txt"}  # no language variants
