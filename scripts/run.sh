#!/usr/bin/env bash
# The main job: install, then run the fused kernel on a worked Mask-DPO example (CPU or GPU).
# (Training replaces this once `maskdpo train` exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${VENV:-.venv}/bin/maskdpo" kernel-demo "$@"
