"""Test setup: the Triton kernels run under the interpreter on the CPU.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, i.e. before maskdpo.kernels
is first imported; pytest imports this file first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The tiny-cpu recipe trained once, start to end: what interrupted runs must reproduce."""
    from train_helpers import train

    root = tmp_path_factory.mktemp("train")
    result = train(root / "run", root / "cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "run", result
