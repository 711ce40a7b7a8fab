"""What the command line prints about itself: `--help-config` is a YAML file that reads back as the same
configuration, and every command's --help shows each option's default."""

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from maskdpo.cli import build_parser
from maskdpo.train.cli import main as train_main
from maskdpo.train.config import Config, field_docs, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "launch" / "configs").glob("*.yaml"))


def _help_config(capsys, *args) -> str:
    assert train_main([*args, "--help-config"]) == 0
    return capsys.readouterr().out


def test_help_config_is_yaml_of_the_defaults(capsys, tmp_path):
    text = _help_config(capsys)
    data = yaml.safe_load(text)
    # Every section and field, with the default as YAML writes it (null, true: never Python's None, True).
    for section in dataclasses.fields(Config):
        default = section.default_factory()
        assert set(data[section.name]) == {f.name for f in dataclasses.fields(default)}
        for f in dataclasses.fields(default):
            assert data[section.name][f.name] == getattr(default, f.name), f"{section.name}.{f.name}"
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            value = line.split(":", 1)[1].strip() if ":" in line else ""
            assert value not in ("None", "True", "False"), line
    # Each field's documentation stands above it, as comments at the field's indentation.
    lines = text.splitlines()
    for section in dataclasses.fields(Config):
        docs = field_docs(section.default_factory)
        for name, doc in docs.items():
            at = lines.index(next(line for line in lines if line.startswith(f"  {name}:")
                                  and lines.index(line) > lines.index(f"{section.name}:")))
            comment = []
            while lines[at - 1].startswith("  # "):
                at -= 1
                comment.insert(0, lines[at][4:])
            assert " ".join(comment) == " ".join(doc.split()), name
    assert all(len(line) <= 100 for line in lines if line.lstrip().startswith("#"))
    # Read back by the real loader, it is the default configuration.
    (tmp_path / "all.yaml").write_text(text)
    assert load_config(tmp_path / "all.yaml") == Config()


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_help_config_after_a_recipe_and_overrides_round_trips(capsys, tmp_path, recipe):
    overrides = ["--optim.lr", "3e-6", "--train.max_steps", "7", "--model.path", "/models/x y"]
    text = _help_config(capsys, "--config", str(recipe), *overrides)
    (tmp_path / "again.yaml").write_text(text)
    expected = load_config(recipe, overrides)
    assert load_config(tmp_path / "again.yaml") == expected
    assert expected != Config()


def _commands(parser, prefix=()):
    """(command words, parser) for every command and sub-command."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, prefix + (name,))


def test_every_option_help_shows_its_default():
    checked = 0
    for words, parser in _commands(build_parser()):
        text = " ".join(parser.format_help().split())
        text = text[text.index("options:"):]  # past the usage line
        formatter = parser._get_formatter()
        starts = sorted(text.index(formatter._format_action_invocation(a)) for a in parser._actions
                        if a.option_strings)
        for action in parser._actions:
            default = action.default
            if (not action.option_strings or default is None or isinstance(default, bool)
                    or default is argparse.SUPPRESS):
                continue
            # The option's own line, as printed: its flags, then its help with the default.
            at = text.index(formatter._format_action_invocation(action))
            shown = text[at:next((s for s in starts if s > at), len(text))]
            flags = shown.split()[0]
            assert "default" in shown and str(default) in shown, (words, flags, shown)
            checked += 1
    assert checked > 40


def test_annotate_help_names_the_annotator():
    parser = dict(_commands(build_parser()))[("annotate",)]
    text = " ".join(parser.format_help().split())
    assert "endpoint of the annotator" in text and "annotator model name" in text
    assert "policy" not in text
