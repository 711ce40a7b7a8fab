"""What the GPU benchmarks share: the interleaved timing rounds and the results folder."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_common  # noqa: E402


def test_interleaved_times_drops_warmup_shuffles_rounds_and_reports_out_of_memory():
    calls = []

    def time_one(name):
        calls.append(name)
        if name == "big":
            raise torch.OutOfMemoryError("no room")
        return {"fwd": float(len(calls)), "fwd_bwd": 2.0 * len(calls)}

    times, failed = bench_common.interleaved_times(["a", "b", "c", "big"], reps=5, warmup=2, time_one=time_one)
    assert failed == {"big": "out of memory"}
    assert calls.count("big") == 1 and calls.count("a") == calls.count("b") == calls.count("c") == 7
    orders = [tuple(calls[i:i + 3]) for i in range(4, len(calls), 3)]  # rounds after the one with "big"
    assert len(set(orders)) > 1  # not the same order every round
    for name in "abc":
        assert len(times[name]["fwd"]) == 5 and len(times[name]["fwd_bwd"]) == 5
        kept_calls = [i + 1 for i, n in enumerate(calls) if n == name][2:]
        assert times[name]["fwd"] == [float(i) for i in kept_calls]  # warm-up rounds dropped, in order
    assert times["big"] == {}


def test_memory_is_measured_one_at_a_time_freed_between_and_out_of_memory_is_an_error():
    """Each measurement starts after the previous one's garbage (reference cycles, as autograd graphs
    and engines make) is collected, also after one ran out of memory; that one is reported, not raised."""
    import gc
    import weakref

    class Cycle:
        def __init__(self):
            self.me = self

    left_behind = []  # a weak reference to the garbage each measurement leaves

    def measure_one(name):
        assert all(ref() is None for ref in left_behind), f"{name} measured beside the last one's garbage"
        garbage = Cycle()
        left_behind.append(weakref.ref(garbage))
        if name == "big":
            raise torch.OutOfMemoryError("no room")
        return {"bytes": len(name)}

    enabled = gc.isenabled()
    gc.disable()  # only an explicit collection frees a cycle
    try:
        results, failed = bench_common.one_at_a_time(["a", "big", "ccc"], measure_one)
    finally:
        if enabled:
            gc.enable()
    assert results == {"a": {"bytes": 1}, "ccc": {"bytes": 3}} and failed == {"big": "out of memory"}
    assert len(left_behind) == 3 and all(ref() is None for ref in left_behind)  # freed after the last one too


def test_results_dir_is_dated_and_named_after_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_common, "RESULTS", tmp_path)
    path = bench_common.results_dir("NVIDIA H100 80GB HBM3")
    assert path.is_dir() and path.parent == tmp_path
    assert path.name.endswith("-nvidia-h100-80gb-hbm3") and path.name[:4].isdigit()
    assert bench_common.results_dir("x", tmp_path / "given") == tmp_path / "given"


def test_environment_names_versions_from_package_metadata(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")  # the one CUDA query it makes
    env = bench_common.environment()
    assert env["gpu"] == "Some GPU" and env["torch"] == torch.__version__
    assert env["triton"] == importlib.metadata.version("triton")
    assert env["liger_kernel"] == importlib.metadata.version("liger-kernel")  # the module has no __version__
    assert len(env["commit"]) == 40 and env["date"][:2] == "20"
