#!/usr/bin/env bash
# N processes on this machine with torchrun: GPUs with NCCL, or CPU processes with gloo (no GPU).
#   bash launch/torchrun.sh 2 --config launch/configs/tiny-cpu.yaml --logging.run_dir runs/x
# Runs from this checkout's environment (launch/env.sh), activated or not.
set -euo pipefail
source "$(dirname "$0")/env.sh"
procs="$1"; shift
port="${MASTER_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
exec "$PYTHON" -m torch.distributed.run --nnodes 1 --nproc_per_node "$procs" --master_addr 127.0.0.1 \
    --master_port "$port" -m maskdpo.train "$@"
