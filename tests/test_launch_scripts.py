"""The launch scripts run from this checkout's environment, activated or not (launch/env.sh): with
only the system directories on PATH they still start maskdpo.train with the environment's python."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bare_environment() -> dict:
    """No virtualenv active and nothing of it on PATH: what a new shell after the Quickstart has."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "TORCH_EXTENSIONS_DIR")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["VENV"] = sys.prefix  # the environment this suite runs in (scripts/test.sh's .venv, or VENV)
    return env


def test_env_script_finds_the_environment_python_and_its_extension_folder():
    out = subprocess.run(["bash", "-c", f"source {ROOT}/launch/env.sh && echo $PYTHON && echo $TORCH_EXTENSIONS_DIR"],
                         env=bare_environment(), capture_output=True, text=True, check=True).stdout.split()
    assert Path(out[0]).resolve() == Path(sys.prefix, "bin", "python").resolve()
    assert Path(out[1]) == Path(sys.prefix, "torch_extensions")


@pytest.mark.slow
def test_torchrun_script_starts_training_from_the_environment():
    result = subprocess.run(["bash", str(ROOT / "launch" / "torchrun.sh"), "1", "--help-config"], cwd=ROOT,
                            env=bare_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensor_parallel" in result.stdout  # the config reference, printed by maskdpo.train
