#!/usr/bin/env bash
# The test suite, as the README and CI run it: install with the test and bench extras, then pytest.
# The kernels run under the Triton interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,bench
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
