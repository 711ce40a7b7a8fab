"""The launch scripts run from this checkout's environment, activated or not (launch/env.sh): with
only the system directories on PATH they still start maskdpo.train with the environment's python."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo.train.launcher import free_port

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


@pytest.mark.slow
def test_a_config_error_under_torchrun_is_said_once():
    result = subprocess.run(["bash", str(ROOT / "launch" / "torchrun.sh"), "2", "--config",
                             str(ROOT / "launch" / "configs" / "tiny-cpu.yaml"), "--optim.lrr", "1"], cwd=ROOT,
                            env={**bare_environment(), "MASTER_PORT": str(free_port())}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    said = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("config error:")]
    assert said == ["config error: command line: unknown key 'optim.lrr'; did you mean optim.lr?"], said


def launch_tiny_cpu(script: str, run_dir: Path, **env) -> list[dict]:
    """The tiny-cpu recipe on 2 processes through a launch script; its metrics without the timings."""
    from train_helpers import RECIPE, comparable, metrics

    result = subprocess.run(["bash", str(ROOT / "launch" / script), "2", "--config", str(RECIPE),
                             "--logging.run_dir", str(run_dir), "--data.cache_dir", str(run_dir.parent / "cache")],
                            cwd=ROOT, env={**bare_environment(), "TRITON_INTERPRET": "0", "MASTER_PORT": str(free_port()), **env},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "exported the policy" in result.stdout
    return [comparable(r) for r in metrics(run_dir)]


@pytest.mark.slow
def test_deepspeed_script_trains_as_torchrun_does_with_and_without_a_hostfile(tmp_path):
    """`launch/deepspeed.sh 2` (DeepSpeed's runner and launcher, no ssh anywhere) and the same with
    HOSTFILE naming this machine train the recipe to torchrun's metrics, step for step."""
    torchrun = launch_tiny_cpu("torchrun.sh", tmp_path / "torchrun" / "run")
    assert len(torchrun) == 9 and torchrun[-1]["loss"] < torchrun[0]["loss"]
    assert launch_tiny_cpu("deepspeed.sh", tmp_path / "deepspeed" / "run") == torchrun
    hosts = tmp_path / "hostfile"
    hosts.write_text("# this machine only\nlocalhost slots=2\n")
    assert launch_tiny_cpu("deepspeed.sh", tmp_path / "hostfile-run" / "run", HOSTFILE=str(hosts)) == torchrun


@pytest.mark.parametrize("text,error", [
    (None, "HOSTFILE={path}: no such file"),
    ("", "{path}: no 'HOST slots=N' line"),
    ("node1 slots=8\nnode2 gpus=8\n", "{path}:2: 'node2 gpus=8' is not 'HOST slots=N'"),
    ("node1 slots=8\n\nnode1 slots=8\n", "{path}:3: node1 is already on line 1"),
    ("node1 slots=4\n", "{path}:1: node1 has slots=4, fewer than the 8 processes per node asked for"),
])
def test_a_bad_hostfile_is_one_line_naming_it_before_anything_starts(tmp_path, text, error):
    path = tmp_path / "hosts"
    if text is not None:
        path.write_text(text)
    result = subprocess.run(["bash", str(ROOT / "launch" / "deepspeed.sh"), "8", "--config", "unused.yaml"], cwd=ROOT,
                            env={**bare_environment(), "HOSTFILE": str(path)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: " + error.format(path=path)
    assert result.stdout == ""  # DeepSpeed's runner never started


def test_hostfile_arguments_skip_ssh_only_for_this_machine_alone(tmp_path):
    from maskdpo.train.hostfile import runner_arguments

    path = tmp_path / "hosts"
    for local in ("localhost", socket.gethostname(), "127.0.0.1"):
        path.write_text(f"{local} slots=2  # a comment\n")
        assert runner_arguments(path, 2) == ["--hostfile", str(path), "--no_ssh_check", "--master_addr", "127.0.0.1"]
    path.write_text("localhost slots=2\nnode2 slots=2\n")  # several hosts: DeepSpeed's own checks and ssh
    assert runner_arguments(path, 2) == ["--hostfile", str(path)]
    path.write_text("node1 slots=2\n")
    assert runner_arguments(path, 2) == ["--hostfile", str(path)]
