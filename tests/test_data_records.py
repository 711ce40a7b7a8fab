"""Bad input: every case is an error naming file, line and field; --skip-invalid records it."""

import json
import re

import pytest

from maskdpo.data import LabelMap, RecordError, encode_file, parse_annotated, parse_pair
from maskdpo.data.jsonl import read_records

LABELS = LabelMap()
GOOD_SAMPLE = {"question_id": "q1", "sample_id": 0, "language": "en", "prompt": "Tell me about Paris.",
               "response": "Paris is in France. It has 90 million people.",
               "sentences": [{"start": 0, "end": 19, "label": "ok"}, {"start": 20, "end": 45, "label": "contradictory"}]}
GOOD_PAIR = {"pair_id": "p1", "prompt": [{"role": "user", "content": "Tell me about Paris."}],
             "chosen": {"response": "Paris is in France.", "sentences": [{"start": 0, "end": 19, "label": "ok"}]},
             "rejected": {"response": "Paris is in Spain.", "sentences": [{"start": 0, "end": 18, "label": "contradictory"}]}}
AUTHORS_PAIR = {"prompt": [{"role": "user", "content": "Tell me about Paris."}],
                "chosen": [{"role": "assistant", "content": "Paris is in France.\nIt is big."}],
                "chosen_item": {"sents": ["Paris is in France.", "It is big."], "type": ["no_hallucination", "no_hallucination"]},
                "rejected": [{"role": "assistant", "content": "Paris is in Spain."}],
                "rejected_item": {"sents": ["Paris is in Spain."], "type": ["hallucination"]}}


def changed(base, path, value):
    record = json.loads(json.dumps(base))
    *parents, last = path
    target = record
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return record


SAMPLE_CASES = [
    ("missing field", ("response",), KeyError, "response", "missing"),
    ("missing question id", ("question_id",), KeyError, "question_id", "missing"),
    ("unknown label", ("sentences", 1, "label"), "wrong", "sentences[1].label", "unknown label 'wrong'"),
    ("span past the end", ("sentences", 1, "end"), 99, "sentences[1]", "outside the response"),
    ("negative start", ("sentences", 0, "start"), -1, "sentences[0]", "outside the response"),
    ("empty span", ("sentences", 0, "end"), 0, "sentences[0]", "empty or outside"),
    ("overlapping spans", ("sentences", 1, "start"), 10, "sentences[1]", "overlaps or precedes"),
    ("empty response", ("response",), "   ", "response", "is empty"),
    ("non-integer span", ("sentences", 0, "start"), "0", "sentences[0].start", "must be int"),
    ("weight out of range", ("sentences", 0, "weight"), 1.5, "sentences[0].weight", "in [0, 1]"),
    ("no label or weight", ("sentences", 0, "label"), KeyError, "sentences[0]", "needs a label or a weight"),
    ("bad prompt", ("prompt",), [], "prompt", "non-empty list"),
]


@pytest.mark.parametrize("name,path,value,field,message", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_bad_annotated_sample(tmp_path, name, path, value, field, message):
    file = tmp_path / "annotated.jsonl"
    file.write_text(json.dumps(GOOD_SAMPLE) + "\n\n" + json.dumps(changed(GOOD_SAMPLE, path, value)) + "\n")
    with pytest.raises(RecordError) as error:
        list(read_records(file, lambda obj, line: parse_annotated(obj, LABELS)))
    assert str(error.value).startswith(f"{file}:3: {field}: ")
    assert message in str(error.value)


PAIR_CASES = [
    ("authors sentence not in response", AUTHORS_PAIR, ("chosen_item", "sents", 1), "It is tiny.",
     "chosen_item.sents[1]", "sentence not found"),
    ("authors sentences out of order", AUTHORS_PAIR, ("chosen_item", "sents"), ["It is big.", "Paris is in France."],
     "chosen_item.sents[0]", "is covered by no sentence"),
    ("authors label count mismatch", AUTHORS_PAIR, ("chosen_item", "type"), ["no_hallucination"],
     "chosen_item.type", "1 labels for 2 sentences"),
    ("authors unknown label", AUTHORS_PAIR, ("rejected_item", "type", 0), "maybe", "rejected_item.type[0].label",
     "unknown label"),
    ("authors empty response", AUTHORS_PAIR, ("rejected", 0, "content"), "", "rejected[-1].content", "is empty"),
    ("ours missing side", GOOD_PAIR, ("rejected",), KeyError, "rejected", "missing"),
    ("ours span outside", GOOD_PAIR, ("chosen", "sentences", 0, "end"), 40, "chosen.sentences[0]", "outside the response"),
]


@pytest.mark.parametrize("name,base,path,value,field,message", PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_bad_pair(tmp_path, name, base, path, value, field, message):
    with pytest.raises(RecordError) as error:
        parse_pair(changed(base, path, value), LABELS)
    assert error.value.field == field and message in error.value.message


def test_malformed_json_names_file_and_line(tmp_path):
    file = tmp_path / "pairs.jsonl"
    file.write_text(json.dumps(GOOD_PAIR) + "\n{not json\n")
    with pytest.raises(RecordError, match=rf"^{file}:2: malformed JSON"):
        encode_file(file)


def test_skip_invalid_counts_and_records_every_skipped_record(tmp_path):
    file = tmp_path / "pairs.jsonl"
    lines = [json.dumps(GOOD_PAIR), "{not json", json.dumps(changed(GOOD_PAIR, ("chosen",), KeyError)),
             json.dumps(AUTHORS_PAIR), json.dumps(changed(AUTHORS_PAIR, ("chosen_item", "sents", 1), "Nope."))]
    # A valid pair with no kept token on either side: skipped even in strict mode, and recorded.
    nothing_kept = changed(GOOD_PAIR, ("chosen", "sentences", 0, "label"), "contradictory")
    nothing_kept = changed(nothing_kept, ("rejected", "sentences", 0, "label"), "ok")
    file.write_text("\n".join(lines + [json.dumps(nothing_kept)]) + "\n")
    with pytest.raises(RecordError, match=":2: malformed JSON"):
        encode_file(file)
    result = encode_file(file, strict=False)
    assert len(result.pairs) == 2 and result.lines == [1, 4]
    assert result.report.read == 6 and result.report.kept == 2
    assert sum(result.report.skipped.values()) == 4
    rejects = [json.loads(line) for line in open(result.report.rejects_path)]
    assert [r["line"] for r in rejects] == [2, 3, 5, 6]
    assert rejects[1]["field"] == "chosen" and rejects[2]["field"] == "chosen_item.sents[1]"
    assert rejects[3]["field"] == "masks" and "no kept token" in rejects[3]["error"]
    assert "4 skipped" in result.report.summary()


def test_label_map_is_configurable():
    custom = LabelMap.from_lists(correct="ok", hallucinated="contradictory,unverifiable,nofact")
    sample = changed(GOOD_SAMPLE, ("sentences", 0, "label"), "nofact")
    assert parse_annotated(sample, LABELS).response.sentences[0].correct == 1.0
    assert parse_annotated(sample, custom).response.sentences[0].correct == 0.0
    with pytest.raises(ValueError, match="both correct and hallucinated"):
        LabelMap.from_lists(correct="ok", hallucinated="ok")


def test_authors_sentences_take_their_earliest_occurrence():
    record = changed(AUTHORS_PAIR, ("chosen", 0, "content"), "Paris is in\nFrance.\nIt is big. Again: Paris is in France.")
    record = changed(record, ("chosen_item", "sents"), ["Paris is in France.", "It is big.", "Again: Paris is in France."])
    record = changed(record, ("chosen_item", "type"), ["no_hallucination"] * 3)
    spans = [(s.start, s.end) for s in parse_pair(record, LABELS).chosen.sentences]
    assert spans == [(0, 19), (20, 30), (31, 57)]  # the folded first occurrence, not the later exact copy


def test_cached_results_do_not_bypass_strict_mode_and_rewrite_rejects(tmp_path):
    file = tmp_path / "pairs.jsonl"
    file.write_text(json.dumps(GOOD_PAIR) + "\n" + json.dumps(changed(GOOD_PAIR, ("chosen",), KeyError)) + "\n")
    cache = tmp_path / "cache"
    first = encode_file(file, strict=False, rejects_path=tmp_path / "a.jsonl", cache_dir=cache)
    again = encode_file(file, strict=False, rejects_path=tmp_path / "b.jsonl", cache_dir=cache)
    assert again.from_cache and again.pairs == first.pairs
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text() != ""
    with pytest.raises(RecordError, match=r":2: chosen: missing"):
        encode_file(file, cache_dir=cache)  # strict: the cached skip-invalid run cannot stand in


def test_failures_outside_our_parsing_are_located_and_skippable(tmp_path):
    file = tmp_path / "pairs.jsonl"
    bad_utf8 = json.dumps(GOOD_PAIR).encode().replace(b"France", b"Fr\xffnce")
    with_cr = json.dumps(changed(changed(GOOD_PAIR, ("chosen", "response"), "Paris is in\rFrance."),
                                 ("pair_id",), "p3")).encode()
    file.write_bytes(json.dumps(GOOD_PAIR).encode() + b"\n" + bad_utf8 + b"\n" + with_cr + b"\n")
    with pytest.raises(RecordError, match=r":2: invalid UTF-8 at byte"):
        encode_file(file)
    result = encode_file(file, strict=False)
    assert result.lines == [1, 3]  # a raw \r inside a record is not a line break

    from maskdpo.data import masks

    def refuse(*args, **kwargs):  # a chat template that raises, as Gemma's does for system turns
        raise RuntimeError("System role not supported")

    original = masks._render
    masks._render = refuse
    try:
        with pytest.raises(RecordError, match=r":1: RuntimeError: System role not supported"):
            encode_file(file)
    finally:
        masks._render = original


@pytest.mark.parametrize("prompt,message", [
    ([{"role": "usr", "content": "x"}], "unknown role 'usr'"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "must end with a user turn"),
])
def test_prompt_roles_are_checked(prompt, message):
    with pytest.raises(RecordError, match=message):
        parse_pair(changed(GOOD_PAIR, ("prompt",), prompt), LABELS)
    extra = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x", "name": "ann"}]
    assert parse_pair(changed(GOOD_PAIR, ("prompt",), extra), LABELS).prompt[1]["name"] == "ann"


def test_sentence_text_must_match_its_span():
    record = changed(GOOD_SAMPLE, ("response",), "I love 🍯 honey. Bees are fish.\n")
    record["sentences"] = [{"start": 0, "end": 15, "label": "ok", "text": "I love 🍯 honey."},
                           {"start": 16, "end": 30, "label": "contradictory", "text": "Bees are fish."}]
    assert len(parse_annotated(record, LABELS).response.sentences) == 2
    record["sentences"][1].update(start=17, end=31)  # UTF-16 offsets: one too far after the emoji
    with pytest.raises(RecordError, match="offsets must count Unicode code points"):
        parse_annotated(record, LABELS)


@pytest.mark.parametrize("response,sents,problem", [
    ("The tower is 330 metres tall.", ["The tower is", "metres tall."], "between sentences is covered by no sentence: ' 330 '"),
    ("Paris is in France. It is big, they say.", ["Paris is in France.", "It is big,"],
     "after the last sentence is covered by no sentence: ' they say.'"),
    ("(c) Paris is in France.", ["Paris is in France."], "before the first sentence is covered by no sentence: '(c) '"),
    ("1. Paris is in France.\n2) It is big.\n- Yes.\n", ["Paris is in France.", "It is big.", "Yes."], None),
])
def test_one_rule_for_uncovered_text_in_both_formats(response, sents, problem):
    """Only whitespace and list markers at line starts may stand outside the sentences, before,
    between or after them, in the authors' format and in ours alike."""
    authors = changed(changed(AUTHORS_PAIR, ("chosen", 0, "content"), response), ("chosen_item", "sents"), sents)
    authors = changed(authors, ("chosen_item", "type"), ["no_hallucination"] * len(sents))
    spans, cursor = [], 0
    for s in sents:
        start = response.index(s, cursor)
        spans.append({"start": start, "end": start + len(s), "label": "ok"})
        cursor = start + len(s)
    ours = changed(GOOD_PAIR, ("chosen",), {"response": response, "sentences": spans})
    for record in (authors, ours):
        if problem is None:
            assert parse_pair(record, LabelMap()).chosen.text == response
        else:
            with pytest.raises(RecordError, match=re.escape(problem)):
                parse_pair(record, LabelMap())
