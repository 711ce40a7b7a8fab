#!/usr/bin/env bash
# Line coverage of maskdpo/ and kernels/ over the test suite, subprocesses included (training workers,
# CLI runs, launch scripts; pyproject.toml [tool.coverage.*]). Arguments go to pytest:
#   bash scripts/coverage.sh                  # the whole suite
#   bash scripts/coverage.sh -m "not slow"    # the fast lane
# prints the report and writes htmlcov/index.html. Coverage slows the interpreted kernels down a lot
# (the whole suite took 35 minutes in one process on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${VENV:-.venv}/bin/python"
rm -rf .coverage-data htmlcov
mkdir -p .coverage-data
status=0
COVERAGE=1 bash scripts/test.sh "$@" || status=$?
"$python" -m coverage combine -q
"$python" -m coverage report
"$python" -m coverage html -q
echo "htmlcov/index.html written; pytest exited $status"
exit "$status"
