#!/usr/bin/env bash
# Multi-GPU testing with torchrun:  bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# NNODES, NODE_RANK, MASTER_ADDR and PORT may be set for multi-node runs.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    "$DIR/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
