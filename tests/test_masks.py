"""Exact token masks: character-level ground truth, both pair formats, drift, truncation, token id 0."""

import json
from pathlib import Path

import pytest
from data_helpers import check_ground_truth, pair, rendered, response
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from maskdpo.data import LabelMap, SkippedPair, encode_pair, load_tokenizer, parse_pair

TOKENIZER = load_tokenizer()
LABELS = LabelMap()

CASES = {
    "english": [("Paris is the capital of France.", "ok"), ("It has 90 million people.", "contradictory"),
                ("The Seine flows through it.", "ok")],
    "newlines and numbered list": [("Here are the facts:", "nofact"), ("1. The tower is 330 m tall.", "ok"),
                                   ("2. It was built in 1850.", "contradictory"), ("3. Gustave Eiffel's firm built it.", "ok")],
    "chinese": [("北京是中国的首都。", "ok"), ("它的人口约为五千万。", "contradictory"), ("故宫位于北京市中心。", "ok")],
    "emoji": [("Bees make honey 🍯.", "ok"), ("They have 12 legs 🐝!", "contradictory"), ("Nice 😀", "nofact")],
    "no space between sentences": [("It opened in 1889.", "ok"), ("It is 500 m tall.", "unverifiable"),
                                   ("Dr. Smith agrees.", "ok")],
    "soft weights": [("Mostly true.", 0.75), ("Half true.", 0.5), ("False.", "contradictory")],
}
SEPARATORS = {"english": " ", "newlines and numbered list": ["\n", "\n", "\n\n", ""], "chinese": "",
              "emoji": ["  ", "\n", ""], "no space between sentences": "", "soft weights": [" \n ", " ", ""]}


@pytest.mark.parametrize("case", list(CASES))
def test_character_level_ground_truth(case):
    chosen = response(CASES[case], SEPARATORS[case])
    rejected = response(list(reversed(CASES[case])), SEPARATORS[case])
    p = pair(chosen, rejected)
    encoded = encode_pair(p, TOKENIZER)
    assert check_ground_truth(TOKENIZER, p, encoded) > 0
    for side in (encoded.chosen, encoded.rejected):
        assert len(side.input_ids) == len(side.weights)
        assert all(w == 0 for w in side.weights[: side.prompt_length])


def bundled_pairs(fmt="ours"):
    """The bundled annotated samples turned into pairs, in our format or the authors'."""
    from maskdpo.data import pair_to_json
    from maskdpo.data.bundled import bundled_pairs as pairs

    records = [pair_to_json(p) for p in pairs()]
    if fmt == "authors":
        records = [to_authors(r) for r in records]
    return records


def to_authors(record, fold_whitespace=False):
    """Our pair record in the authors' format: sentences as strings, labels as (no_)hallucination."""
    out = {"prompt": record["prompt"]}
    for side in ("chosen", "rejected"):
        text = record[side]["response"]
        sents = [text[s["start"]:s["end"]] for s in record[side]["sentences"]]
        if fold_whitespace:
            sents = [" ".join(s.split()) for s in sents]
        types = ["no_hallucination" if LABELS.correctness(s["label"]) else "hallucination"
                 for s in record[side]["sentences"]]
        out[side] = [{"role": "assistant", "content": text}]
        out[f"{side}_item"] = {"sents": sents, "type": types}
    return out


def test_bundled_pairs_meet_the_ground_truth():
    checked = 0
    for record in bundled_pairs():
        p = parse_pair(record, LABELS)
        checked += check_ground_truth(TOKENIZER, p, encode_pair(p, TOKENIZER))
    assert checked > 2000


@pytest.mark.parametrize("fold_whitespace", [False, True], ids=["exact", "whitespace-normalised"])
def test_authors_format_gives_the_same_masks(fold_whitespace):
    for record in bundled_pairs():
        ours = encode_pair(parse_pair(record, LABELS), TOKENIZER)
        theirs = encode_pair(parse_pair(to_authors(record, fold_whitespace), LABELS), TOKENIZER)
        assert ours.chosen == theirs.chosen and ours.rejected == theirs.rejected


def authors_cumulative_masks(tokenizer, p, side):
    """The authors' method: tokenize each sentence alone and add up counts from the response start."""
    resp = getattr(p, side)
    prefix = tokenizer.apply_chat_template(list(p.prompt), tokenize=False, add_generation_prompt=True)
    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    full = tokenizer(rendered(tokenizer, p, side), add_special_tokens=False)["input_ids"]
    weights = [0.0] * len(full)
    for s in resp.sentences:
        n = len(tokenizer(resp.text[s.start:s.end], add_special_tokens=False)["input_ids"])
        keep = s.correct if side == "chosen" else 1 - s.correct
        for i in range(start, min(start + n, len(full))):
            weights[i] = keep
        start += n
    return weights


def test_cumulative_token_counts_drift_where_offsets_stay_exact():
    items = [("Facts:", "nofact"), ("1. Water boils at 100 C at sea level.", "ok"),
             ("2. The Moon is made of cheese.", "contradictory"), ("3. Light is faster than sound.", "ok"),
             ("4. Sharks are mammals.", "contradictory"), ("In short, mixed.", "nofact")]
    p = pair(response(items, "\n\n"), response(items, "\n\n"))
    encoded = encode_pair(p, TOKENIZER)
    check_ground_truth(TOKENIZER, p, encoded)
    drifted = authors_cumulative_masks(TOKENIZER, p, "chosen")
    assert drifted != encoded.chosen.weights.tolist()  # the newlines shifted every later span


def test_truncation_drops_the_tail_and_is_counted():
    items = [("A true first sentence.", "ok"), ("A false second one.", "contradictory"), ("A true third.", "ok")]
    p = pair(response(items), response(items))
    full = encode_pair(p, TOKENIZER)
    cut = encode_pair(p, TOKENIZER, max_length=full.chosen.prompt_length + 3)
    assert len(cut.chosen.input_ids) == full.chosen.prompt_length + 3
    assert cut.chosen.truncated == len(full.chosen.input_ids) - len(cut.chosen.input_ids)
    assert cut.chosen.input_ids.tolist() == full.chosen.input_ids[: len(cut.chosen.input_ids)].tolist()
    assert cut.chosen.weights.tolist() == full.chosen.weights[: len(cut.chosen.weights)].tolist()
    with pytest.raises(SkippedPair, match="no kept token on either side after truncation"):
        encode_pair(p, TOKENIZER, max_length=full.chosen.prompt_length)


def test_pair_with_nothing_kept_is_skipped_not_plain_dpo():
    all_ok = [("Fine.", "ok"), ("Also fine.", "nofact")]
    p = pair(response([("Wrong.", "contradictory")]), response(all_ok))
    with pytest.raises(SkippedPair, match="no kept token on either side"):
        encode_pair(p, TOKENIZER)


def test_end_of_turn_token_counts_as_chosen():
    items = [("First true.", "ok"), ("Last false.", "contradictory")]
    p = pair(response(items), response(items))
    eot = TOKENIZER.convert_tokens_to_ids("<|eot_id|>")
    by_choice = {choice: encode_pair(p, TOKENIZER, eot=choice) for choice in ("always", "last_sentence", "never")}
    ids = by_choice["never"].chosen.input_ids.tolist()
    last = len(ids) - 1 - ids[::-1].index(eot)
    weights = {c: (e.chosen.weights[last], e.rejected.weights[last]) for c, e in by_choice.items()}
    assert weights == {"always": (1.0, 1.0), "last_sentence": (0.0, 1.0), "never": (0.0, 0.0)}
    assert encode_pair(p, TOKENIZER) == by_choice["always"]  # the default, as the authors and TRL
    with pytest.raises(ValueError, match="eot must be one of always, last_sentence, never"):
        encode_pair(p, TOKENIZER, eot="sometimes")


def test_the_end_of_turn_token_is_read_from_the_chat_template(tmp_path):
    """A base Llama-3 tokenizer ends sequences with <|end_of_text|>, yet its template ends turns with
    <|eot_id|>; a template that writes nothing after a message has no end-of-turn token."""
    from maskdpo.data.masks import end_of_turn

    base = tokenizer_variant(tmp_path / "base", eos="<|end_of_text|>")
    assert base.eos_token == "<|end_of_text|>"
    assert end_of_turn(base) == base.convert_tokens_to_ids("<|eot_id|>")
    plain = tokenizer_variant(tmp_path / "plain", template="{% for m in messages %}{{ m['role'] + ': ' + m['content'] "
                                                          "}}{% endfor %}{% if add_generation_prompt %}assistant: "
                                                          "{% endif %}")
    assert end_of_turn(plain) is None
    p = pair(response([("Old.", "ok")]), response([("False.", "contradictory")]))
    assert encode_pair(p, plain) == encode_pair(p, plain, eot="never")


def id0_tokenizer():
    """A real fast tokenizer, built in code, whose id 0 is the ordinary character '!'."""
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert alphabet[0] == "!"
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = TOKENIZER.chat_template.replace("<|begin_of_text|>", "").replace("bos_token", "''")
    fast.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    return fast


def test_token_id_zero_is_an_ordinary_token():
    tokenizer = id0_tokenizer()
    p = pair(response([("Yes!", "ok"), ("No!", "contradictory")]), response([("Wow!", "unverifiable")]))
    encoded = encode_pair(p, tokenizer)
    check_ground_truth(tokenizer, p, encoded)
    zeros = [w for t, w in zip(encoded.chosen.input_ids, encoded.chosen.weights) if t == 0]
    assert zeros == [1.0, 0.0]  # "Yes!" kept, "No!" masked: id 0 is weighted like any token
    assert [w for t, w in zip(encoded.rejected.input_ids, encoded.rejected.weights) if t == 0] == [1.0]


SENTENCE = st.text(alphabet=st.sampled_from(list("abcXYZ 019.,'é中文😀-")), min_size=1, max_size=30).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(SENTENCE, st.sampled_from(["ok", "nofact", "contradictory", "unverifiable"]),
                          st.sampled_from(["", " ", "\n", "\n\n", "  ", "\n1. ", " - "])), min_size=1, max_size=6))
def test_property_random_sentences_and_separators(items):
    resp = response([(t, label) for t, label, _ in items], [sep for _, _, sep in items])
    p = pair(resp, resp)
    try:
        encoded = encode_pair(p, TOKENIZER)
    except SkippedPair:
        return
    check_ground_truth(TOKENIZER, p, encoded)


def test_loads_any_tokenizer_directory(tmp_path):
    id0_tokenizer().save_pretrained(str(tmp_path))
    loaded = load_tokenizer(tmp_path)
    assert loaded.convert_tokens_to_ids("!") == 0
    with pytest.raises(ValueError, match="is not a directory"):
        load_tokenizer(tmp_path / "missing")


def test_bundled_tokenizer_is_reproducible():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_tokenizer.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def tokenizer_variant(tmp_path, template=None, trim_offsets=False, eos=None):
    """The bundled tokenizer with another chat template, offsets trimmed (RoBERTa-style) or another
    end-of-sequence token."""
    from tokenizers import processors

    from maskdpo.data.tokenizer import BUNDLED_TOKENIZER

    TOKENIZER.save_pretrained(str(tmp_path))
    if trim_offsets:
        tok = Tokenizer.from_file(str(BUNDLED_TOKENIZER / "tokenizer.json"))
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        tok.save(str(tmp_path / "tokenizer.json"))
    if template:
        (tmp_path / "chat_template.jinja").write_text(template)
    if eos:
        config = json.loads((tmp_path / "tokenizer_config.json").read_text())
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": eos}))
    load_tokenizer.cache_clear()
    return load_tokenizer(tmp_path)


def test_end_of_turn_is_the_special_token_even_after_spaces(tmp_path):
    # Llama-2 style: a space between the content and the end-of-turn token.
    template = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|> ' + m['content'] "
                "+ ' <|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|> ' }}{% endif %}")
    tokenizer = tokenizer_variant(tmp_path, template=template)
    p = pair(response([("Old.", "ok"), ("New.", "ok")]), response([("Old.", "ok"), ("False.", "contradictory")]))
    encoded = encode_pair(p, tokenizer, eot="last_sentence")
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    last = len(encoded.chosen.input_ids) - 1
    assert encoded.chosen.input_ids[last] == eot and encoded.chosen.weights[last] == 1.0
    assert encoded.chosen.weights[last - 1] == 0.0  # the space before it is not the end of turn


def test_trimmed_offsets_keep_spaces_between_sentences_unweighted(tmp_path):
    tokenizer = tokenizer_variant(tmp_path, trim_offsets=True)
    zero_width = 0
    for seed in range(30):
        import random

        rng = random.Random(seed)
        items = [(rng.choice(["Yes it is.", "No way!", "Maybe so", "12 cats."]), rng.choice(["ok", "contradictory"]))
                 for _ in range(rng.randint(1, 5))]
        seps = [rng.choice([" ", "  ", "\n", " \n "]) for _ in items]
        resp = response(items, seps)
        p = pair(resp, resp)
        try:
            encoded = encode_pair(p, tokenizer)
        except SkippedPair:
            continue
        full = rendered(tokenizer, p, "chosen")
        at = full.index(resp.text.strip(), len(full) - len(resp.text) - 20)
        offsets = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for (a, b), w in zip(offsets, encoded.chosen.weights):
            if a == b and a > at:
                zero_width += 1
                # Trimmed to the next sentence's first character, a space between sentences stays 0.
                if not any(s.start < a - at < s.end for s in resp.sentences):
                    assert w == 0, (full[a - 3:a + 3], w)
    assert zero_width > 0  # the case really occurs
    load_tokenizer.cache_clear()
