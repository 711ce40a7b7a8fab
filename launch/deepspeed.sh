#!/usr/bin/env bash
# One node, N GPUs:   bash launch/deepspeed.sh 8 --config launch/configs/llama3.1-8b-paper.yaml --model.path DIR
# Several nodes:      HOSTFILE=hosts bash launch/deepspeed.sh 8 ...   (hostfile lines: "node1 slots=8")
# Runs from this checkout's environment (launch/env.sh), activated or not. The hostfile is checked
# first (maskdpo/train/hostfile.py): a bad line is one error naming it; one naming only this machine
# launches here without DeepSpeed's ssh round trips.
set -euo pipefail
source "$(dirname "$0")/env.sh"
gpus="$1"; shift
case "$gpus" in ''|*[!0-9]*) echo "launch/deepspeed.sh: the first argument is the processes per node, got '$gpus'" >&2; exit 2;; esac
hostfile=()
if [ -n "${HOSTFILE:-}" ]; then
    args="$("$PYTHON" -m maskdpo.train.hostfile "$HOSTFILE" "$gpus")" || exit 2
    read -r -a hostfile <<< "$args"
fi
exec "$PYTHON" -m deepspeed.launcher.runner "${hostfile[@]}" --num_gpus "$gpus" --master_port "${MASTER_PORT:-29500}" \
    --module --no_local_rank maskdpo.train "$@"
