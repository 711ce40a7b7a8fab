"""Test setup: the Triton kernels run under the interpreter on the CPU.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, i.e. before maskdpo.kernels
is first imported; pytest imports this file first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
