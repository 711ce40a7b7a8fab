"""A built wheel installs and works where the checkout is not on the path: every module imports and
the offline commands run, with the bundled data, tokenizer and templates read from the install."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter in isolated mode (-I: no PYTHONPATH, no current directory on the
# path) with only the installed wheel's folder put first, so the test environment's editable
# install of the checkout cannot answer instead.
RUNNER = """
import importlib, pkgutil, sys
site = sys.argv.pop(1)
sys.path.insert(0, site)
import maskdpo
if sys.argv[1] == "--import-all":
    # __main__ modules run their command when imported: they are checked by running them.
    names = [m.name for m in pkgutil.walk_packages(maskdpo.__path__, "maskdpo.") if not m.name.endswith("__main__")]
    for name in names:
        importlib.import_module(name)
    outside = sorted(n for n, m in sys.modules.items()
                     if n.split(".")[0] == "maskdpo" and not (getattr(m, "__file__", None) or site).startswith(site))
    assert not outside, f"imported from outside the install: {outside}"
    print(len(names), "modules")
    sys.exit(0)
from maskdpo.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy without build outputs: setuptools reuses an in-tree build/ folder, which
    # may still hold modules the checkout has since moved or deleted.
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".maskdpo-cache", "runs", ".pytest_cache"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(source)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(root.glob("maskdpo-*.whl"))
    target = root / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    (root / "runner.py").write_text(RUNNER)
    return root, wheel, target


def run_installed(installed, *args, cwd=None):
    root, _, target = installed
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-I", str(root / "runner.py"), str(target), *args],
                          capture_output=True, text=True, cwd=cwd or root, env=env, timeout=600)


@pytest.mark.slow
def test_wheel_holds_every_package_and_asset(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ["maskdpo/kernels/sequence_logps.py", "maskdpo/kernels/reference.py", "maskdpo/model/__init__.py",
                     "maskdpo/model/llama.py", "maskdpo/dpo/objective.py", "maskdpo/train/__main__.py",
                     "maskdpo/loop/annotate.py", "maskdpo/assets/templates/judge.txt",
                     "maskdpo/assets/tokenizer/tokenizer.json", "maskdpo/assets/data/annotated.jsonl",
                     "maskdpo/assets/models/llama3.1-70b.json"]:
        assert expected in names, expected
    assert not [n for n in names if n.startswith(("kernels/", "tests/", "benchmarks/"))]
    # Every package folder of the checkout is in the wheel (a folder without __init__.py is not).
    for init in (ROOT / "maskdpo").rglob("*.py"):
        assert "maskdpo/" + str(init.relative_to(ROOT / "maskdpo")) in names, init


@pytest.mark.slow
def test_every_module_imports_from_the_installed_wheel(installed):
    result = run_installed(installed, "--import-all")
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[0]) >= 40


@pytest.mark.slow
def test_offline_commands_run_from_the_installed_wheel(installed, tmp_path):
    _, _, target = installed
    annotated = target / "maskdpo" / "assets" / "data" / "annotated.jsonl"
    pairs = tmp_path / "pairs.jsonl"
    result = run_installed(installed, "data", "pairs", str(annotated), "-o", str(pairs))
    assert result.returncode == 0, result.stderr[-3000:]
    assert pairs.read_text().count("\n") >= 20

    result = run_installed(installed, "data", "encode", str(pairs), "--budget", "1024",
                           "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept" in result.stdout and "of token slots used" in result.stdout

    result = run_installed(installed, "evaluate", "--annotated", str(annotated), "--output", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(next((tmp_path / "eval").glob("*.json")).read_text())

    result = run_installed(installed, "kernel-demo", "--vocab", "256")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK: kernel matches float64 PyTorch" in result.stdout


@pytest.mark.slow
def test_annotation_templates_load_from_the_installed_wheel(installed, tmp_path):
    root, _, target = installed
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from maskdpo.loop.annotate import load_templates, TEMPLATES; "
            "t = load_templates(); assert str(TEMPLATES).startswith(sys.argv[1]); print(sorted(t))")
    result = subprocess.run([sys.executable, "-I", "-c", code, str(target)], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "judge" in result.stdout
