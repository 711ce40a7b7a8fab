"""benchmarks/gpu_check.py without a GPU: a stand-in for torch.cuda, and steps that are real small
processes (one writes results, one fails, one hangs with a child of its own, one comes too late for
the budget); the readers of the steps' result files on files written here (the JUnit XML by a real
pytest run)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_check_summary  # noqa: E402
from gpu_check import Step  # noqa: E402

GPU = "NVIDIA H100 80GB HBM3"


class StandInCuda:
    """What gpu_check asks of torch.cuda."""

    def __init__(self, available=True):
        self.available = available

    def is_available(self):
        return self.available

    def get_device_name(self, device=None):
        return GPU


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_allowance_shares_the_remaining_budget_among_the_steps_left():
    assert gpu_check.allowance(90, 480, 480) == 90
    assert gpu_check.allowance(140, 390, 400) == pytest.approx(400 * 140 / 390)  # an early finish leaves more
    assert gpu_check.allowance(140, 140, -5) == 0  # over budget: nothing, so the step is skipped


@pytest.mark.slow  # subprocesses
def test_steps_run_under_the_budget_and_the_summary_follows_every_step(tmp_path):
    out = tmp_path / "out"
    pid_file = tmp_path / "grandchild.pid"

    def steps(out_dir):
        assert out_dir == out
        hang = (f"import subprocess, sys, time\n"
                f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                f"time.sleep(60)\n")
        return [
            Step("writes", python(f"import json, os; json.dump({{'value': 21, 'interpret': os.environ.get('TRITON_INTERPRET'), "
                                  f"'probe': os.environ.get('PROBE')}}, open({str(out / 'result.json')!r}, 'w'))"),
                 share=2, min_s=0.1, env={"TRITON_INTERPRET": None, "PROBE": "set"},
                 read=lambda d: {**json.loads((d / "result.json").read_text()),
                                 "doubled": 2 * json.loads((d / "result.json").read_text())["value"]}),
            Step("peeks", python(f"import shutil; shutil.copy({str(out / 'summary.json')!r}, {str(tmp_path / 'peek.json')!r})"),
                 share=2, min_s=0.1, read=lambda d: json.loads((d / "missing.json").read_text())),
            Step("fails", python("import sys; print('line one'); print('the last words', file=sys.stderr); sys.exit(3)"),
                 share=2, min_s=0.1),
            Step("hangs", python(hang), share=3, min_s=0.1),
            Step("late", python("pass"), share=1, min_s=60),
        ]

    start = time.monotonic()
    assert gpu_check.main(["--budget-s", "8", "--out-dir", str(out)], cuda=StandInCuda(), make_steps=steps) == 1
    assert time.monotonic() - start < 9

    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["gpu"] == GPU and summary["budget_s"] == 8
    writes, peeks, fails, hangs, late = summary["steps"]
    assert [s["status"] for s in summary["steps"]] == ["ok", "failed", "failed", "failed", "skipped"]
    assert os.environ["TRITON_INTERPRET"] == "1"  # set for this process by conftest.py, removed for the step
    assert writes["results"] == {"value": 21, "interpret": None, "probe": "set", "doubled": 42}
    assert writes["returncode"] == 0
    assert writes["timeout_s"] == pytest.approx((8 - writes["started_s"]) * 2 / 10)  # its share of the whole budget
    assert writes["started_s"] < 0.5

    # The summary was on disk while "peeks" ran: the step before done, this one running, the rest pending.
    seen = json.loads((tmp_path / "peek.json").read_text())
    assert [(s["name"], s["status"]) for s in seen["steps"]] == [
        ("writes", "ok"), ("peeks", "running"), ("fails", "pending"), ("hangs", "pending"), ("late", "pending")]
    assert seen["steps"][0]["results"]["doubled"] == 42

    assert peeks["returncode"] == 0 and peeks["error"].startswith("its results could not be read: FileNotFoundError")
    assert fails["returncode"] == 3 and fails["error"] == "exit status 3\nline one\nthe last words"
    assert (out / "fails.log").read_text() == "line one\nthe last words\n"

    # "hangs" got the time left in proportion to its share of the steps left (3 of 4), and was killed then.
    assert writes["started_s"] < peeks["started_s"] < fails["started_s"] < hangs["started_s"] < 8 - hangs["timeout_s"]
    assert hangs["started_s"] >= writes["seconds"] + peeks["seconds"] + fails["seconds"]
    assert hangs["timeout_s"] == pytest.approx((8 - hangs["started_s"]) * 3 / 4)
    assert hangs["timeout_s"] <= hangs["seconds"] < hangs["timeout_s"] + 2
    assert hangs["error"].startswith(f"timed out after {hangs['timeout_s']:.0f} s") and hangs["returncode"] is None
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead(grandchild)  # its whole process group went with it

    assert late["timeout_s"] == pytest.approx(max(0, 8 - late["started_s"]))  # all that was left: still under 60 s
    assert "under its minimum of 60 s" in late["error"] and "seconds" not in late

    md = (out / "summary.md").read_text()
    assert md.startswith(f"# GPU check, {GPU}\n")
    assert "| writes | ok |" in md and "| fails | failed |" in md and "| late | skipped |" in md
    assert "fails (log: fails.log):\n\n```\nexit status 3\nline one\nthe last words\n```" in md


@pytest.mark.slow  # subprocesses and a signal
def test_a_terminated_check_ends_its_running_step_and_records_it(tmp_path):
    """A step runs in its own session, which no SIGTERM or Ctrl-C for the check reaches: the check must
    end it itself, or a killed check would leave a benchmark holding the GPU."""
    pids = tmp_path / "pids"
    hang = (f"import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pids)!r}, 'w').write(f'{{__import__(\"os\").getpid()}} {{child.pid}}')\n"
            f"time.sleep(60)\n")
    check = (f"import sys\n"
             f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
             f"import gpu_check\n"
             f"class Cuda:\n"
             f"    is_available = staticmethod(lambda: True)\n"
             f"    get_device_name = staticmethod(lambda *a: 'GPU')\n"
             f"steps = lambda out_dir: [gpu_check.Step('hangs', [sys.executable, '-c', {hang!r}], share=1, min_s=0)]\n"
             f"sys.exit(gpu_check.main(['--out-dir', {str(tmp_path / 'out')!r}, '--budget-s', '60'], cuda=Cuda(), "
             f"make_steps=steps))\n")
    process = subprocess.Popen([sys.executable, "-c", check], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.terminate()
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 128 + 15, output
    step, grandchild = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (dead(step) and dead(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead(step) and dead(grandchild)
    record = json.loads((tmp_path / "out" / "summary.json").read_text())["steps"][0]
    assert (record["name"], record["status"], record["error"]) == ("hangs", "failed", "interrupted")


def test_only_runs_the_named_steps(tmp_path):
    steps = lambda out_dir: [Step("a", python("pass"), share=1, min_s=0), Step("b", python("pass"), share=1, min_s=0)]
    assert gpu_check.main(["--out-dir", str(tmp_path), "--only", "b"], cuda=StandInCuda(), make_steps=steps) == 0
    assert [s["name"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]] == ["b"]
    with pytest.raises(SystemExit):
        gpu_check.main(["--out-dir", str(tmp_path), "--only", "c"], cuda=StandInCuda(), make_steps=steps)
    with pytest.raises(SystemExit):
        gpu_check.main(["--budget-s", "0"], cuda=StandInCuda(), make_steps=steps)


def test_exits_with_status_2_and_one_line_without_cuda(tmp_path, capsys):
    assert gpu_check.main(["--out-dir", str(tmp_path / "out")], cuda=StandInCuda(available=False)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("CUDA is not available")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CPU the benchmarks stop after parsing their arguments")
def test_default_steps_are_command_lines_the_benchmarks_accept(tmp_path, capsys):
    import bench_linear_sequence_logps
    import bench_sequence_logps
    import bench_train

    steps = {step.name: step for step in gpu_check.default_steps(tmp_path)}
    assert list(steps) == ["kernel-tests", "kernel-bench", "fused-bench", "train"]
    tests = steps["kernel-tests"]
    assert tests.env == {"TRITON_INTERPRET": "0", "MASKDPO_TEST_DEVICE": "cuda"}
    assert all(steps[name].env == {"TRITON_INTERPRET": None} for name in ("kernel-bench", "fused-bench", "train"))
    # every kernel test runs (no -x): on a first GPU one failure must not hide the others
    assert f"--junitxml={tmp_path / 'kernel-tests.xml'}" in tests.command and "-x" not in tests.command
    assert all((ROOT / name).is_file() for name in gpu_check.KERNEL_TESTS)
    # Each benchmark parses its arguments (an unknown one would be a SystemExit), then finds no CUDA.
    for name, bench in (("kernel-bench", bench_sequence_logps), ("fused-bench", bench_linear_sequence_logps),
                        ("train", bench_train)):
        command = steps[name].command
        assert command[1] == str(Path(bench.__file__).resolve())
        assert bench.main(command[2:]) == 2, name
        assert "CUDA is not available" in capsys.readouterr().err
    assert steps["kernel-bench"].command[3:6] == ["8192", "16384", "--vocab"]
    assert "liger-dpo" in steps["fused-bench"].command and "16384" in steps["fused-bench"].command
    assert steps["train"].command[3:8] == ["llama3.2-1b", "--heads", "fused", "eager", "--steps"]


@pytest.mark.slow  # a pytest subprocess
def test_kernel_tests_are_counted_from_pytest_junit_xml(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_one(): pass\n"
        "def test_two(): pass\n"
        "def test_fails(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='no')\n"
        "def test_skipped(): pass\n")
    subprocess.run([sys.executable, "-m", "pytest", "test_sample.py", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={tmp_path / 'kernel-tests.xml'}"], cwd=tmp_path, capture_output=True, check=False)
    assert gpu_check_summary.kernel_tests(tmp_path) == {
        "tests": 4, "failures": 1, "errors": 0, "skipped": 1, "passed": 2, "failing": ["test_sample::test_fails"]}


def kernel_row(n, logits, provider, ms):
    return {"n": n, "logits": logits, "provider": provider, "fwd_bwd_ms": ms, "fraction_of_3pass_floor": 3.0 / ms,
            "fraction_of_moved_floor": 2.0 / ms}


def test_benchmark_results_become_the_headline(tmp_path):
    rows = [kernel_row(8192, kind, name, ms) for name, flat, peaked in (
        ("maskdpo", 2.1, 2.3), ("maskdpo[a]", 2.0, 2.2), ("maskdpo[b]", 1.8, 2.6), ("liger", 5.0, 5.5), ("eager", 20.0, 21.0))
        for kind, ms in (("flat", flat), ("peaked", peaked))]
    rows += [kernel_row(16384, kind, "maskdpo[b]", 4.0) for kind in ("flat", "peaked")]
    rows += [{"n": 16384, "logits": kind, "provider": "eager", "error": "out of memory"} for kind in ("flat", "peaked")]
    (tmp_path / "sequence_logps.json").write_text(json.dumps({"copy_bandwidth_bytes_per_s": 3.2e12, "rows": rows}))
    (tmp_path / "linear_sequence_logps.json").write_text(json.dumps({"rows": [
        {"n": 16384, "provider": "F.linear bwd (all N)", "fwd_bwd_ms": 30.0, "extra_peak_gib": None},
        {"n": 16384, "provider": "maskdpo-fused", "fwd_bwd_ms": 40.0, "extra_peak_gib": 0.6},
        {"n": 16384, "provider": "liger-dpo", "fwd_bwd_ms": 100.0, "extra_peak_gib": 3.0},
        {"n": 16384, "provider": "linear+kernel", "error": "out of memory"}]}))
    (tmp_path / "train.json").write_text(json.dumps({"rows": [
        {"shape": "llama3.2-1b", "head": "fused", "mfu": 0.41, "tokens_per_s": 52000.0, "step_s": 0.158,
         "peak_memory_gib": 30.5, "step_times_s": [0.158]},
        {"shape": "llama3.2-1b", "head": "eager", "error": "out of memory"}]}))

    kernel = gpu_check_summary.kernel_bench(tmp_path)
    assert kernel["copy_bandwidth_tbs"] == 3.2
    # best by flat + peaked: maskdpo[a] (4.2 ms) over maskdpo[b] (4.4 ms), although b is faster on flat logits
    assert kernel["best_variant"]["8192"] == pytest.approx({
        "provider": "maskdpo[a]", "fwd_bwd_ms_flat_plus_peaked": 4.2, "speedup_vs_liger": 10.5 / 4.2,
        "speedup_vs_eager": 41.0 / 4.2})
    assert kernel["best_variant"]["16384"] == {"provider": "maskdpo[b]", "fwd_bwd_ms_flat_plus_peaked": 8.0,
                                               "speedup_vs_liger": None, "speedup_vs_eager": None}
    assert kernel["errors"] == {"eager N=16384 flat": "out of memory", "eager N=16384 peaked": "out of memory"}
    assert {r["provider"] for r in kernel["kernel"]} == {"maskdpo", "maskdpo[a]", "maskdpo[b]"}

    fused = gpu_check_summary.fused_bench(tmp_path)
    assert fused["fused_vs_liger_dpo"] == {"16384": {"speedup": 2.5, "fused_extra_peak_gib": 0.6,
                                                     "liger_extra_peak_gib": 3.0}}
    assert fused["by_n"]["16384"]["linear+kernel"] == {"error": "out of memory"}
    assert "F.linear bwd (all N)" not in fused["by_n"]["16384"]

    trained = gpu_check_summary.train(tmp_path)
    assert trained == {"heads": {"llama3.2-1b/fused": {"mfu": 0.41, "tokens_per_s": 52000.0, "step_s": 0.158,
                                                       "peak_memory_gib": 30.5},
                                 "llama3.2-1b/eager": {"error": "out of memory"}}}

    records = [{"name": "kernel-bench", "status": "ok", "seconds": 100.0, "timeout_s": 150.0, "results": kernel},
               {"name": "fused-bench", "status": "ok", "seconds": 80.0, "timeout_s": 120.0, "results": fused},
               {"name": "train", "status": "ok", "seconds": 90.0, "timeout_s": 140.0, "results": trained}]
    env = {"gpu": GPU, "date": "2026-12-02", "commit": "c0ffee", "driver": "570.1", "cuda": "13.0", "torch": "2.13.0",
           "triton": "3.9.0", "liger_kernel": "0.8.5", "python": "3.11"}
    gpu_check.write_summary(tmp_path, env, 480, records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["headline"]["best_variant"]["8192"]["provider"] == "maskdpo[a]"
    assert summary["headline"]["kernel_fraction_of_floor"]["maskdpo[b] N=8192 flat"] == pytest.approx(
        {"3-pass": 3.0 / 1.8, "moved-bytes": 2.0 / 1.8})
    assert summary["headline"]["fused_vs_liger_dpo"]["16384"]["speedup"] == 2.5
    assert summary["headline"]["mfu"] == {"llama3.2-1b/fused": 0.41, "llama3.2-1b/eager": None}
    md = (tmp_path / "summary.md").read_text()
    assert "| 8192 | flat | maskdpo[b] | 1.800 | 1.67 | 1.11 |" in md
    assert f"- best variant at N = 8192: maskdpo[a], {10.5 / 4.2:.2f}x Liger, {41.0 / 4.2:.2f}x eager" in md
    assert "- N = 16384: maskdpo-fused 2.50x faster than LigerFusedLinearDPOLoss; extra memory 0.60 GiB vs 3.00 GiB" in md
    assert "| llama3.2-1b/fused | 41.0% | 52000 | 0.158 | 30.5 |" in md
    assert "| llama3.2-1b/eager | out of memory |" in md
