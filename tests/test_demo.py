"""The kernel demo: its timing synchronises with the GPU around the clock reads, and it runs on CPU."""

import torch

from maskdpo.demo import run_kernel_demo, timed


def test_cuda_timing_synchronises_before_each_clock_read():
    events = []
    ticks = iter([10.0, 10.25])

    def clock():
        events.append("clock")
        return next(ticks)

    def work():
        events.append("work")
        return "result"

    result, seconds = timed(work, torch.device("cuda"), synchronize=lambda: events.append("sync"), clock=clock)
    assert (result, seconds) == ("result", 0.25)
    # queued work finishes before the start is read, and the timed work before the end is read
    assert events == ["sync", "clock", "work", "sync", "clock"]


def test_cpu_timing_does_not_touch_cuda():
    def synchronize():
        raise AssertionError("synchronised on a CPU device")

    result, seconds = timed(lambda: 7, torch.device("cpu"), synchronize=synchronize)
    assert result == 7 and seconds >= 0


def test_demo_matches_float64_on_cpu(capsys):
    assert run_kernel_demo(vocab=256) == 0
    out = capsys.readouterr().out
    assert "on cpu (Triton interpreter), fwd+bwd" in out and "OK: kernel matches float64 PyTorch" in out
