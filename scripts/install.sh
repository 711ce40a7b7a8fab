#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install maskdpo into it, editable.
# Usage: bash scripts/install.sh [EXTRAS]     e.g. EXTRAS=test,bench
# torch is pinned in the same pip command as everything else: an unpinned torch requirement alone
# would pull the multi-GB CUDA build on a CPU machine. The other pins are the versions tested here.
# Set VENV to use another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
extras="${1:-}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
target="."
[ -n "$extras" ] && target=".[$extras]"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" "triton==3.9.0" \
    "transformers==5.23.0" "deepspeed==0.19.8" "setuptools>=70" -e "$target"
