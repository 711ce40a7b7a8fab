#!/usr/bin/env bash
# N processes on this machine with torchrun: GPUs with NCCL, or CPU processes with gloo (no GPU).
#   bash launch/torchrun.sh 2 --config launch/configs/tiny-cpu.yaml --logging.run_dir runs/x
set -euo pipefail
procs="$1"; shift
port="${MASTER_PORT:-$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # several processes share the CPU cores
exec "${PYTHON:-python3}" -m torch.distributed.run --nnodes 1 --nproc_per_node "$procs" --master_addr 127.0.0.1 \
    --master_port "$port" -m maskdpo.train "$@"
