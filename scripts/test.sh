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
# pytest-xdist workers: TEST_WORKERS (default the cores, at most 4; 0 runs the tests in one process).
# Each file runs on one worker (--dist loadfile), so a module fixture is built once; the long files
# start first (tests/conftest.py). (xdist's loadgroup cannot group under pytest 9.2: it renames
# node ids through an attribute pytest no longer reads.)
cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc alone obeys OMP_NUM_THREADS=1
workers="${TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
# COVERAGE=1: pytest under coverage.py (scripts/coverage.sh combines and reports).
runner=(-m pytest)
[ -n "${COVERAGE:-}" ] && runner=(-m coverage run -m pytest)
exec "${VENV:-.venv}/bin/python" "${runner[@]}" "${parallel[@]}" "$@"
