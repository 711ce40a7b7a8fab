#!/usr/bin/env bash
# The test suite, as the README and CI run it: install with the test and bench extras, then pytest.
# The kernels run under the Triton interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,bench
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# DeepSpeed compiles a small comm op at first use; keep that build with this environment, so no
# other checkout's half-finished build (a stale lock) can stall the tests.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/${VENV:-.venv}/torch_extensions}"
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
