"""Validate maskdpo on the first GPU in one run (one H100/H200, 8 minutes by default).

Steps, each a subprocess with its own timeout, in this order:
  kernel-tests  the kernel tests on CUDA without the Triton interpreter (TRITON_INTERPRET=0,
                MASKDPO_TEST_DEVICE=cuda): tests/test_sequence_logps.py, test_linear_sequence_logps.py,
                test_vocab_parallel.py, and the attention backends against dense (test_model.py),
                pytest -q (every test runs: one failure does not hide the others), JUnit XML in
                kernel-tests.xml
  kernel-bench  bench_sequence_logps.py: N = 8192 and 16384, V = 128256, bf16, flat and peaked logits,
                every launch variant of the kernel (maskdpo[<variant>]), eager and Liger; no
                torch.compile provider (its compilation would take a third of the budget)
  fused-bench   bench_linear_sequence_logps.py at N = 16384, H = 4096, V = 128256, bf16: the fused head,
                F.linear + kernel and Liger's LigerFusedLinearDPOLoss (torch.compile'd)
  train         bench_train.py: Llama-3.2-1B shapes, bf16, the fused head and the eager baseline, MFU

Everything goes to benchmarks/results/<date>-<gpu>/ (or --out-dir): each step's own JSON and
markdown, its log (<step>.log), and summary.json + summary.md: the GPU, driver and versions, each
step's status (ok; failed, with the last lines of its log; skipped, when too little of the budget was
left), wall time, and the headline figures (the kernel's fraction of both floors per variant, the best
variant per N, the fused head against Liger in time and memory, MFU per head). The summary is
rewritten before and after every step, so a killed run keeps what it had.

The budget (--budget-s, default 480) is shared out as the run goes: a step may use the time left
times its share over the shares of the steps not yet run, so an early finish leaves more to the next
ones, and a hanging step (killed with its process group at its timeout) cannot starve them. A step
whose allowance is under its minimum is skipped.

Usage: python benchmarks/gpu_check.py [--budget-s 480] [--only kernel-tests kernel-bench ...] [--out-dir DIR]
Exits with status 2 without CUDA, 1 when a step failed or was skipped, 0 when all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check_summary as summary_of  # noqa: E402
from bench_common import cuda_missing, environment, results_dir  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
KERNEL_TESTS = ("tests/test_sequence_logps.py", "tests/test_linear_sequence_logps.py", "tests/test_vocab_parallel.py",
                "tests/test_model.py")
ERROR_LINES = 20  # of a failed step's log, in the summary


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    share: float  # its part of the budget, relative to the other steps'
    min_s: float  # below this allowance it is not started
    env: dict = field(default_factory=dict)  # environment changes; None removes a variable
    read: Callable[[Path], dict] | None = None  # results folder -> headline figures


def default_steps(out_dir: Path, python: str = sys.executable) -> list[Step]:
    out = str(out_dir)
    compiled = {"TRITON_INTERPRET": None}  # the benchmarks time compiled kernels, whatever the caller's shell says
    return [
        # TRITON_INTERPRET=0, not unset: tests/conftest.py turns the interpreter on when it is unset.
        Step("kernel-tests", [python, "-m", "pytest", *KERNEL_TESTS, "-q", f"--junitxml={out_dir / 'kernel-tests.xml'}",
                              "-p", "no:cacheprovider"],
             share=90, min_s=30, env={"TRITON_INTERPRET": "0", "MASKDPO_TEST_DEVICE": "cuda"},
             read=summary_of.kernel_tests),
        Step("kernel-bench", [python, str(BENCH / "bench_sequence_logps.py"), "--n", "8192", "16384", "--vocab", "128256",
                              "--reps", "10", "--warmup", "2", "--no-compile", "--out-dir", out],
             share=140, min_s=60, env=compiled, read=summary_of.kernel_bench),
        Step("fused-bench", [python, str(BENCH / "bench_linear_sequence_logps.py"), "--n", "16384", "--hidden", "4096",
                             "--vocab", "128256", "--reps", "5", "--warmup", "2",
                             "--providers", "maskdpo-fused", "linear+kernel", "liger-dpo", "--out-dir", out],
             share=110, min_s=60, env=compiled, read=summary_of.fused_bench),
        Step("train", [python, str(BENCH / "bench_train.py"), "--shapes", "llama3.2-1b", "--heads", "fused", "eager",
                       "--steps", "5", "--warmup", "2", "--out-dir", out],
             share=140, min_s=60, env=compiled, read=summary_of.train),
    ]


def allowance(share: float, shares_left: float, remaining_s: float) -> float:
    """Seconds a step may run: the remaining budget in proportion to its share of the steps left."""
    return max(0.0, remaining_s) * share / shares_left


def run_step(step: Step, timeout_s: float, out_dir: Path, cwd: Path = ROOT) -> dict:
    """Run one step to completion or its timeout; its output goes to <out_dir>/<name>.log. It runs in
    its own session so that at the end its whole process group (pytest workers, torch.compile
    workers) is killed: nothing of it keeps running or holds GPU memory during the next step. That
    session gets no Ctrl-C or SIGTERM meant for this script, so it is also killed when this one is
    interrupted."""
    env = {**os.environ, **step.env}
    env = {key: value for key, value in env.items() if value is not None}
    log = out_dir / f"{step.name}.log"
    start = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(step.command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
        try:
            try:
                returncode, timed_out = process.wait(timeout=timeout_s), False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group has already gone
                pass
            process.wait()
    result = {"name": step.name, "seconds": time.monotonic() - start, "timeout_s": timeout_s, "returncode": returncode,
              "log": log.name, "status": "ok", "error": None, "results": None}
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-ERROR_LINES:])
    if timed_out:
        result.update(status="failed", error=f"timed out after {timeout_s:.0f} s\n{tail}")
    elif returncode != 0:
        result.update(status="failed", error=f"exit status {returncode}\n{tail}")
    if step.read is not None:
        try:
            result["results"] = step.read(out_dir)
        except Exception as error:  # noqa: BLE001 - a missing or malformed result file is this step's failure
            if result["status"] == "ok":
                result.update(status="failed", error=f"its results could not be read: {type(error).__name__}: {error}")
    return result


def write_summary(out_dir: Path, env: dict, budget_s: float, steps: list[dict]) -> None:
    """summary.json and summary.md, each replaced whole (a killed run never leaves half a file)."""
    summary = {"environment": env, "budget_s": budget_s, "steps": steps, "headline": summary_of.headline(steps)}
    for name, text in (("summary.json", json.dumps(summary, indent=2) + "\n"), ("summary.md", summary_of.markdown(summary))):
        partial = out_dir / f".{name}.partial"
        partial.write_text(text)
        partial.replace(out_dir / name)


def run_all(steps: list[Step], out_dir: Path, env: dict, budget_s: float, cwd: Path = ROOT) -> list[dict]:
    start = time.monotonic()
    records = [{"name": step.name, "status": "pending"} for step in steps]
    for i, step in enumerate(steps):
        started_s = time.monotonic() - start
        timeout_s = allowance(step.share, sum(s.share for s in steps[i:]), budget_s - started_s)
        if timeout_s < step.min_s:
            records[i] = {"name": step.name, "status": "skipped", "started_s": started_s, "timeout_s": timeout_s,
                          "error": f"skipped: {budget_s - started_s:.0f} s of the budget left, {timeout_s:.0f} s for "
                                   f"this step, under its minimum of {step.min_s:.0f} s"}
        else:
            records[i] = {"name": step.name, "status": "running", "started_s": started_s, "timeout_s": timeout_s}
            write_summary(out_dir, env, budget_s, records)
            print(f"{step.name}: started, {timeout_s:.0f} s at most", flush=True)
            try:
                records[i] = {"started_s": started_s, **run_step(step, timeout_s, out_dir, cwd)}
            except BaseException:  # Ctrl-C or SIGTERM: run_step has ended the step; record that, then stop
                records[i] = {**records[i], "status": "failed", "error": "interrupted", "log": f"{step.name}.log"}
                write_summary(out_dir, env, budget_s, records)
                raise
        print(f"{step.name}: {records[i]['status']} ({records[i].get('seconds', 0):.0f} s)", flush=True)
        write_summary(out_dir, env, budget_s, records)
    return records


def main(argv=None, cuda=torch.cuda, make_steps=default_steps) -> int:
    """cuda: the torch.cuda module, or a stand-in; make_steps(out_dir) -> the steps (tests give their own)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of all steps together")
    parser.add_argument("--only", nargs="+", default=None, metavar="STEP", help="run only these steps (in the usual order)")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: results/<date>-<gpu>/")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, not {args.budget_s}")
    if cuda_missing("the GPU paths", cuda):
        return 2
    env = environment(cuda)
    out_dir = results_dir(env["gpu"], args.out_dir)
    steps = make_steps(out_dir)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown steps {unknown}; the steps are {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in args.only]
    # SIGTERM (a scheduler's or `timeout`'s) unwinds like Ctrl-C, so that the running step is ended too.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        records = run_all(steps, out_dir, env, args.budget_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"wrote {out_dir}/summary.md and summary.json")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
