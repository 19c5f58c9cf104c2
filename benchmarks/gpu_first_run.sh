#!/usr/bin/env bash
# The first run on a GPU machine, in one command (a few minutes): 20 training steps of the
# real 1.5B shape with 4 layers on every GPU present, beside the rehearsal's and the memory
# plan's figures for the same run (benchmarks/gpu_first_run.py), then `ftbench doctor` at
# the 1.5B shape. Usage: benchmarks/gpu_first_run.sh [OUT_DIR] [extra gpu_first_run.py args]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-first-run}; shift || true
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NGPU" -ge 1 ] || { echo "no GPU found (nvidia-smi -L lists none)"; exit 2; }
status=0
$PY -m torch.distributed.run --standalone --nproc_per_node="$NGPU" \
    benchmarks/gpu_first_run.py --out "$OUT" "$@" 2>&1 | tee "$OUT/first_run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
$PY -m ftbench doctor --size 1.5b --layers 2 --seq 4096 --batch 2 2>&1 | tee "$OUT/doctor.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
