#!/usr/bin/env bash
# One node, N GPUs:   bash launch/deepspeed.sh 8 --config launch/configs/llama3.1-8b-paper.yaml --model.path DIR
# Several nodes:      HOSTFILE=hosts bash launch/deepspeed.sh 8 ...   (hostfile lines: "node1 slots=8")
# Runs from this checkout's environment (launch/env.sh), activated or not.
set -euo pipefail
source "$(dirname "$0")/env.sh"
gpus="$1"; shift
hostfile=()
[ -n "${HOSTFILE:-}" ] && hostfile=(--hostfile "$HOSTFILE")
exec "$PYTHON" -m deepspeed.launcher.runner "${hostfile[@]}" --num_gpus "$gpus" --master_port "${MASTER_PORT:-29500}" \
    --module --no_local_rank maskdpo.train "$@"
