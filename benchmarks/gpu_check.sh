#!/usr/bin/env bash
# The GPU checks in one go, for a machine with one or more CUDA devices (about 6 minutes
# on one H200): the GPU tests (training loop, validation, checkpoints and resume under
# real NCCL with FSDP2 bf16; the fused loss at V = 2^17; the memory plan against measured
# peaks at the 1.5B shape, 2 layers and all 28), the doctor at the 1.5B shape with 2
# layers, the fused-loss memory benchmark and the training throughput of both arms at the
# 1.5B shape (4 layers, then all 28).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (logs go to OUT_DIR, default gpu-check/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
status=0
step() {  # name, command...: run, log, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc in $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
step gpu-tests $PY -m pytest -q -m gpu tests/gpu -s -p no:cacheprovider -o addopts=""
step loss-memory $PY benchmarks/bench_loss_memory.py --batch 16 --seq 4096 --repeats 1
step doctor $PY -m ftbench doctor --size 1.5b --layers 2 --seq 4096 --batch 2
step throughput $PY benchmarks/bench_training.py --sizes 1.5b --layers 4 --batch 4 --seq 4096
step throughput-full $PY benchmarks/bench_training.py --sizes 1.5b --batch 4 --seq 4096 --steps 3 --no-memory
exit $status
