#!/usr/bin/env bash
# One node, N GPUs:   bash launch/deepspeed.sh 8 --model DIR --pairs pairs.jsonl --out runs/x --pipeline-stages 2 --bf16
# Several nodes:      HOSTFILE=hosts bash launch/deepspeed.sh 8 ...   (hostfile lines: "node1 slots=8")
set -euo pipefail
gpus="$1"; shift
hostfile=()
[ -n "${HOSTFILE:-}" ] && hostfile=(--hostfile "$HOSTFILE")
exec deepspeed "${hostfile[@]}" --num_gpus "$gpus" --master_port "${MASTER_PORT:-29500}" -m maskdpo.train "$@"
