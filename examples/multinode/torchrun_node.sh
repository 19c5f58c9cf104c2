#!/bin/bash
# Plain multi-node torchrun, without a scheduler (static rendezvous): run this once on
# every node, with the same MASTER_ADDR/MASTER_PORT (node 0, reachable from all nodes)
# and each node's own NODE_RANK.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NPROC_PER_NODE=8 \
#   FTBENCH_CONFIG=configs/1.5b.yaml bash examples/multinode/torchrun_node.sh
#   FTBENCH_DRY_RUN=1 ...   # print the launch, run nothing
#
# Outputs (run.out_dir) and prepared data must be on a filesystem every node sees.
set -euo pipefail

missing=0
require() {
    if [ -z "${!1:-}" ]; then
        echo "error: \$$1 is not set: $2" >&2
        missing=1
    fi
}
require NNODES "the number of nodes taking part, e.g. NNODES=2"
require NODE_RANK "this node's index, 0 on the node that hosts the rendezvous, then 1, 2, ..."
require MASTER_ADDR "the address of node 0, reachable from every node, e.g. MASTER_ADDR=10.0.0.1"
require MASTER_PORT "a free TCP port on node 0, the same on every node, e.g. MASTER_PORT=29500"
require FTBENCH_CONFIG "the pair config to train, e.g. FTBENCH_CONFIG=configs/1.5b.yaml"
if [ "$missing" -ne 0 ]; then
    exit 2
fi
if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || [ "$NODE_RANK" -ge "$NNODES" ]; then
    echo "error: \$NODE_RANK=$NODE_RANK must be an integer in 0..$((NNODES - 1)) (NNODES=$NNODES)" >&2
    exit 2
fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [ "${NPROC_PER_NODE:-0}" -lt 1 ]; then
    echo "error: \$NPROC_PER_NODE is not set and no GPU was found; set NPROC_PER_NODE" >&2
    exit 2
fi

LAUNCH=(torchrun
    --nnodes="$NNODES"
    --node_rank="$NODE_RANK"
    --nproc_per_node="$NPROC_PER_NODE"
    --master_addr="$MASTER_ADDR"
    --master_port="$MASTER_PORT"
    -m ftbench train-pair --config "$FTBENCH_CONFIG" "$@")

if [ -n "${FTBENCH_DRY_RUN:-}" ]; then
    echo "${LAUNCH[*]}"
    exit 0
fi
# Node 0 rehearses the run on fake tensors for this job (its world size, nodes and GPU)
# before it starts; if the rehearsal fails, node 0 never joins and the others time out at
# the rendezvous. FTBENCH_SKIP_REHEARSAL=1 skips it.
if [ "$NODE_RANK" -eq 0 ] && [ -z "${FTBENCH_SKIP_REHEARSAL:-}" ]; then
    SETS=()
    args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
        if [ "${args[$i]}" = "--set" ] && [ $((i + 1)) -lt ${#args[@]} ]; then
            SETS+=(--set "${args[$((i + 1))]}")
        fi
    done
    GPU_NAME=${FTBENCH_GPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)}
    ${FTBENCH:-python -m ftbench} doctor --simulate --config "$FTBENCH_CONFIG" \
        --world-size $((NNODES * NPROC_PER_NODE)) --nodes "$NNODES" --gpu "${GPU_NAME:-h100}" \
        --layers 2 "${SETS[@]}" || {
        echo "error: the rehearsal failed, this node does not start: a FAIL row above names what would break on the GPUs; FTBENCH_SKIP_REHEARSAL=1 starts anyway" >&2
        exit 2
    }
fi
exec "${LAUNCH[@]}"
