#!/usr/bin/env bash
# The main job: install, then train Mask-DPO with the embedded tiny-cpu recipe (a tiny random Llama,
# the bundled pairs and tokenizer, a 2-stage DeepSpeed pipeline on 2 CPU processes).
# Extra arguments override the recipe, e.g.: bash scripts/run.sh --train.epochs 1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PYTHON="$PWD/${VENV:-.venv}/bin/python"
source launch/env.sh  # TORCH_EXTENSIONS_DIR inside the environment: DeepSpeed's op is built once there
exec "${VENV:-.venv}/bin/maskdpo" train --config launch/configs/tiny-cpu.yaml "$@"
