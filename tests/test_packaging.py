"""`pip install .` ships the kernels as maskdpo.kernels, never as a top-level `kernels` package."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_maskdpo_kernels(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("maskdpo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "maskdpo/kernels/sequence_logps.py" in names
    assert "maskdpo/kernels/reference.py" in names
    assert not [n for n in names if n.startswith("kernels/")]

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    check = (
        "import importlib.util, maskdpo.kernels as k; "
        f"assert k.__file__.startswith({str(target)!r}), k.__file__; "
        "spec = importlib.util.find_spec('kernels'); "
        "assert spec is None or 'maskdpo' not in (spec.origin or ''), spec; "
        "print(k.sequence_logps.__name__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    # -I: isolated mode, so the editable install of the test environment does not answer instead.
    run = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {check}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "sequence_logps"
