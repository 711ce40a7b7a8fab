"""Running `maskdpo train` on the tiny-cpu recipe as a user does: real processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "launch" / "configs" / "tiny-cpu.yaml"


def train(run_dir, cache_dir, *extra, popen=False, timeout=600):
    command = [sys.executable, "-m", "maskdpo.cli", "train", "--config", str(RECIPE),
               "--logging.run_dir", str(run_dir), "--data.cache_dir", str(cache_dir), *extra]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    if popen:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def comparable(record):
    return {k: v for k, v in record.items() if k not in ("seconds", "tokens_per_s")}


def wait_for_steps(run_dir, steps, process, timeout=300):
    """Wait until metrics.jsonl of a running job holds `steps` lines."""
    file = Path(run_dir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if file.exists() and len(file.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"the job did not reach step {steps} (exit {process.poll()})")


def processes_of(run_dir):
    """PIDs of live processes whose command line names `run_dir` (the job's launcher and workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if str(run_dir).encode() in cmdline and "Z" not in state:
                found.append(int(proc.name))
    return found


def kill_job(process):
    """SIGKILL the whole job (launcher and workers: it runs in its own session)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_until_gone(run_dir, timeout=120):
    """Wait until no process names `run_dir` any more; True when none is left."""
    deadline = time.time() + timeout
    while time.time() < deadline and processes_of(run_dir):
        time.sleep(0.2)
    return not processes_of(run_dir)


def same_weights(a, b):
    ours = transformers.AutoModelForCausalLM.from_pretrained(str(Path(a) / "hf")).state_dict()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(Path(b) / "hf")).state_dict()
    return set(ours) == set(theirs) and all(torch.equal(ours[n], theirs[n]) for n in theirs)
