#!/usr/bin/env bash
# Multi-GPU training with torchrun:  bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# NNODES, NODE_RANK, MASTER_ADDR and PORT may be set for multi-node runs.
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# torchrun from the project's .venv when there is one, else from PATH.
if [ -x "$DIR/../.venv/bin/torchrun" ]; then
  TORCHRUN=${TORCHRUN:-"$DIR/../.venv/bin/torchrun"}
else
  TORCHRUN=${TORCHRUN:-torchrun}
fi

PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
"$TORCHRUN" \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$DIR/train.py" "$CONFIG" --launcher pytorch "${@:3}"
