"""The encode cache, parallel encoding, and the `maskdpo data` commands run for real."""

import json

import pytest
from test_masks import bundled_pairs, id0_tokenizer, to_authors

from maskdpo.cli import main
from maskdpo.data import encode, encode_file
from maskdpo.data.cli import BUNDLED_DATA


@pytest.fixture
def pairs_file(tmp_path):
    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bundled_pairs()), encoding="utf-8")
    return file


def test_cache_is_reused_and_keyed_by_data_tokenizer_and_options(tmp_path, pairs_file):
    cache = tmp_path / "cache"
    first = encode_file(pairs_file, cache_dir=cache)
    again = encode_file(pairs_file, cache_dir=cache)
    assert not first.from_cache and again.from_cache
    assert again.pairs == first.pairs and again.lines == first.lines and again.summary_lines()[1:] == first.summary_lines()[1:]
    assert not encode_file(pairs_file, cache_dir=cache, max_length=64).from_cache  # options
    other = tmp_path / "tok"
    id0_tokenizer().save_pretrained(str(other))
    assert not encode_file(pairs_file, other, cache_dir=cache).from_cache  # tokenizer
    pairs_file.write_text(pairs_file.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert not encode_file(pairs_file, cache_dir=cache).from_cache  # data
    assert len(list(cache.glob("*.npz"))) == 4


@pytest.mark.slow
def test_parallel_encoding_matches_serial(monkeypatch, tmp_path):
    records = [to_authors(r) if i % 2 else r for i, r in enumerate(bundled_pairs())] * 3
    for i, r in enumerate(records):  # three copies: each its own id (the authors' format ids by line)
        if "pair_id" in r:
            records[i] = {**r, "pair_id": f"{r['pair_id']}#{i}"}
    records.insert(5, {"chosen": "broken"})
    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    monkeypatch.setattr(encode, "PARALLEL_MIN_LINES", 10)
    serial = encode_file(file, strict=False, rejects_path=tmp_path / "serial.rejects")
    parallel = encode_file(file, strict=False, workers=2, rejects_path=tmp_path / "parallel.rejects")
    assert parallel.pairs == serial.pairs and parallel.lines == serial.lines
    assert (tmp_path / "serial.rejects").read_text() == (tmp_path / "parallel.rejects").read_text()


def test_data_commands_end_to_end(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(BUNDLED_DATA / "annotated.jsonl"), "-o", str(pairs)]) == 0
    out = capsys.readouterr().out
    assert "questions: 30" in out and "questions skipped, fewer than two samples: 1" in out
    written = pairs.read_text(encoding="utf-8").splitlines()
    assert f"wrote {len(written)} pairs" in out

    cache = str(tmp_path / "cache")
    assert main(["data", "encode", str(pairs), "--budget", "1024", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert f"{len(written)} kept" in out and "response tokens kept" in out and "of token slots used" in out

    assert main(["data", "inspect", str(pairs), "--index", "1", "--color", "never", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    second = json.loads(written[1])
    assert f"pair {second['pair_id']}" in out and "── chosen:" in out and "── rejected:" in out
    kept = [second["chosen"]["response"][s["start"]:s["end"]] for s in second["chosen"]["sentences"]
            if s["label"] in ("ok", "nofact")]
    chosen_view = out.split("── chosen:")[1].split("── rejected:")[0]
    assert all(sentence in chosen_view for sentence in kept) and "⟦" in chosen_view

    assert main(["data", "inspect", str(pairs), "--color", "always", "--cache-dir", cache]) == 0
    assert "\033[1;32m" in capsys.readouterr().out


def test_data_commands_report_bad_input_clearly(tmp_path, capsys):
    bad = tmp_path / "annotated.jsonl"
    lines = (BUNDLED_DATA / "annotated.jsonl").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace('"label": "ok"', '"label": "great"', 1)
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_file = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(bad), "-o", str(out_file)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: sentences[" in err and "unknown label 'great'" in err and not out_file.exists()

    assert main(["data", "pairs", str(bad), "-o", str(out_file), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "1 skipped (1 at sentences[].label)" in out
    rejects = [json.loads(line) for line in open(str(bad) + ".rejects.jsonl")]
    assert len(rejects) == 1 and rejects[0]["line"] == 4

    assert main(["data", "encode", str(tmp_path / "missing.jsonl"), "--cache-dir", ""]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["data", "encode", "{input}", "--rejects", "{input}", "--skip-invalid", "--cache-dir", ""],
    ["data", "pairs", "{annotated}", "-o", "{annotated}"],
    ["data", "pairs", "{annotated}", "-o", "{tmp}/p.jsonl", "--rejects", "{annotated}"],
    ["evaluate", "--annotated", "{annotated}", "--output", "{annotated}"],
])
def test_an_output_equal_to_an_input_is_refused_and_the_input_kept(tmp_path, capsys, command):
    import shutil

    annotated = tmp_path / "annotated.jsonl"
    shutil.copy(BUNDLED_DATA / "annotated.jsonl", annotated)
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(annotated), "-o", str(pairs)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (annotated, pairs)}
    args = [a.replace("{input}", str(pairs)).replace("{annotated}", str(annotated)).replace("{tmp}", str(tmp_path))
            for a in command]
    assert main(args) == 2
    assert "it would be overwritten" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_a_lone_surrogate_is_located_to_its_field(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(BUNDLED_DATA / "annotated.jsonl"), "-o", str(pairs)]) == 0
    lines = pairs.read_text().splitlines()
    record = json.loads(lines[2])
    record["rejected"]["response"] = record["rejected"]["response"][:5] + "\ud800" + record["rejected"]["response"][6:]
    lines[2] = json.dumps(record)  # ensure_ascii: the surrogate travels as the escape \ud800
    pairs.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["data", "encode", str(pairs), "--cache-dir", ""]) == 2
    assert f"{pairs}:3: rejected.response: holds a lone surrogate" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    ({"pair_id": None}, "pairs.jsonl:2: pair_id: must be a non-empty string or an integer, got None"),
    ({"pair_id": "SAME"}, "pairs.jsonl:3: pair_id: duplicate pair id 'SAME', first on line 2"),
])
def test_null_and_duplicate_pair_ids_are_located(tmp_path, capsys, change, message):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(BUNDLED_DATA / "annotated.jsonl"), "-o", str(pairs)]) == 0
    lines = pairs.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), **change})
    if change["pair_id"] == "SAME":
        lines[2] = json.dumps({**json.loads(lines[2]), **change})
    pairs.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["data", "encode", str(pairs), "--cache-dir", ""]) == 2
    assert message in capsys.readouterr().err


def test_inspect_finds_its_pair_past_a_raw_carriage_return_and_bad_utf8(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(BUNDLED_DATA / "annotated.jsonl"), "-o", str(pairs)]) == 0
    lines = pairs.read_text().splitlines()
    first = json.loads(lines[0])
    first["prompt"][0]["content"] += "\r"  # a raw CR inside a record (JSON allows it escaped only: raw below)
    lines[0] = json.dumps(first, ensure_ascii=False).replace("\\r", "\r")
    raw = [line.encode() for line in lines]
    raw[1] = raw[1].replace(b"e", b"\xff", 1)  # a line of invalid UTF-8 before the pair asked for
    pairs.write_bytes(b"\n".join(raw) + b"\n")
    third = json.loads(lines[2])
    capsys.readouterr()
    code = main(["data", "inspect", str(pairs), "--pair-id", third["pair_id"], "--color", "never", "--cache-dir", "",
                 "--skip-invalid"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"pair {third['pair_id']}" in out.out


@pytest.mark.parametrize("color", ["never", "always"])
def test_inspect_prints_a_legend_of_exactly_the_marks_in_use(tmp_path, capsys, color):
    import re

    from maskdpo.data.inspect import MARKS, RESET, STYLES

    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "pairs", str(BUNDLED_DATA / "annotated.jsonl"), "-o", str(pairs)]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(pairs), "--index", "2", "--color", color, "--cache-dir", ""]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("pair "))
    legend = lines[header + 1]
    assert legend.startswith("legend: ") and lines[header + 2].startswith("── chosen:")
    body = "\n".join(lines[header + 2:])
    escapes = re.compile(r"\033\[[0-9;]*m")
    if color == "never":
        assert not escapes.search(legend)
        used = {marks for marks in MARKS.values() if any(marks)}
        for opening, closing in used:  # each bracket pair around a word, once
            assert len(re.findall(re.escape(opening) + r"[^\W\d_][\w /=]*" + re.escape(closing), legend)) == 1, legend
        bracket_chars = {c for marks in used for c in marks}
        assert {c for c in legend if not c.isascii()} == bracket_chars  # no other mark named
        assert {c for c in body if c in bracket_chars} <= set(legend)
        assert "masked" in legend and "prompt" in legend and "not shown" in legend
    else:
        styles = {style for style in STYLES.values() if style}
        assert set(escapes.findall(legend)) == styles | {RESET}
        for cls, style in STYLES.items():
            if style:  # each meaning in its own style
                assert re.search(re.escape(style) + r"[^\033]+" + re.escape(RESET), legend), cls
        assert "kept chosen" in legend and "kept rejected" in legend and "soft" in legend and "masked plain" in legend
        assert re.search(re.escape(STYLES["prompt"]) + r"prompt", legend)
        assert set(escapes.findall(body)) <= set(escapes.findall(legend))
        chosen, rejected = body.split("── rejected:")  # the sides are coloured too, not only the legend
        assert STYLES["kept_chosen"] in chosen and STYLES["kept_rejected"] in rejected
