"""The kernel tests run the kernels on the device under test, every one of them: run here with a
stand-in for the GPU (MASKDPO_TEST_DEVICE=meta: tensors without values, which the kernels' PyTorch
path accepts, so every test's calls get as far as the kernel functions and fail on the values), the
devices each test gave the kernel functions are recorded (tests/conftest.py, kernel_devices). A test
that built its tensors on the CPU would test the reference there, not the kernel on the GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow  # a pytest run of the kernel test files (every test fails fast on the meta device)
def test_every_kernel_test_runs_on_the_device_under_test(tmp_path):
    from conftest import KERNEL_TEST_FILES

    record = tmp_path / "devices.jsonl"
    env = {**os.environ, "MASKDPO_TEST_DEVICE": "meta", "TRITON_INTERPRET": "0", "MASKDPO_KERNEL_DEVICES": str(record)}
    subprocess.run([sys.executable, "-m", "pytest", *(str(TESTS / f) for f in KERNEL_TEST_FILES), "-q",
                    "-p", "no:cacheprovider", "-p", "no:xdist", "--hypothesis-seed", "0"],
                   env=env, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    used = [r for r in rows if r["devices"]]
    assert len(used) > 150  # the kernel tests ran (skips and pure-Python tests call no kernel)
    elsewhere = {r["test"]: r["devices"] for r in used if r["devices"] != ["meta"]}
    assert not elsewhere, elsewhere
