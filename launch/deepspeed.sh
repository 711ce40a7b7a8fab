#!/usr/bin/env bash
# One node, N GPUs:   bash launch/deepspeed.sh 8 --config launch/configs/llama3.1-8b-paper.yaml --model.path DIR
# Several nodes:      HOSTFILE=hosts bash launch/deepspeed.sh 8 ...   (hostfile lines: "node1 slots=8")
set -euo pipefail
gpus="$1"; shift
hostfile=()
[ -n "${HOSTFILE:-}" ] && hostfile=(--hostfile "$HOSTFILE")
exec deepspeed "${hostfile[@]}" --num_gpus "$gpus" --master_port "${MASTER_PORT:-29500}" \
    --module --no_local_rank maskdpo.train "$@"
