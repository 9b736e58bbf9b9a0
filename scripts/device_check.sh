#!/usr/bin/env bash
# One prepared device call for the GPU path (OpenAI-Triton selective scan, CUDA runner): <= 10 minutes.
#
#   kernel parity on the GPU  ->  CUDA tests of tests/test_triton_scan.py  ->  memory-floor test
#   ->  model table  ->  torch.compile rows  ->  kernel profile  ->  one merged report (printed even when a step failed), JSON + logs in $OUT.
# Two more steps run only when named in STEPS (they do not fit the same 10 minutes):
#   pytest-train  the CUDA training test of tests/test_train_eval.py
#   train-gpu     benchmarks/gpu_train.py: synth, `train --device cuda` for TRAIN_MINUTES (default 3),
#                 `evaluate --device cuda` on seeds 1-3, `bench --device cuda` on VIDEO (default: the
#                 first of ../shared/data/vtest.avi, runs/vtest.avi that exists; carry runs/vtest.avi)
#   e.g.  STEPS="pytest-train train-gpu" TRAIN_MINUTES=4 bash scripts/device_check.sh
#
# Runs from the repository root with PYTHONPATH=. against the machine's own packages (torch, triton,
# pytest: nothing is carried). Each step has its own time limit; a failed or timed-out step is
# reported and the next one still runs. Exit: 0 all steps passed, 1 a step failed, 2 no CUDA device.
# Through the device tool (docs/gpu.md):  command "bash scripts/device_check.sh", timeout_s 600.
# `bash scripts/device_check.sh --smoke` runs the same steps on a CPU through Triton's interpreter
# with tiny sizes (checks this script; its numbers are not measurements, and steps may time out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/device_check}
SMOKE=()
[ "${1:-}" = "--smoke" ] && SMOKE=(--smoke)
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
LOG="$OUT/device_check.log"
: > "$LOG"

if ! "$PY" -c 'import torch, triton' >>"$LOG" 2>&1; then
    echo "error: $PY cannot import torch and triton (see $LOG); set PYTHON=/path/to/python" >&2
    exit 2
fi
if [ ${#SMOKE[@]} -gt 0 ]; then
    export TRITON_INTERPRET=1
else
    unset TRITON_INTERPRET
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >>"$LOG" 2>&1; then
        echo "error: no CUDA device visible to $PY (torch.cuda.is_available() is False): this script measures the GPU path; run it through the device tool (docs/gpu.md)" >&2
        exit 2
    fi
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c 'import platform, torch, triton; print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__, "card", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (smoke)")'
} 2>&1 | tee -a "$LOG"

status=0
STEPS=${STEPS:-parity pytest-cuda floor table compile profile}   # e.g. STEPS="table profile" to rerun some
step() {   # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    case " $STEPS " in *" $name "*) ;; *) echo "== $name skipped (STEPS)" | tee -a "$LOG"; return 0 ;; esac
    start=$SECONDS
    echo "== $name (limit ${limit}s)" | tee -a "$LOG"
    if timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"; then
        echo "== $name ok ($((SECONDS - start))s)" | tee -a "$LOG"
    else
        rc=$?
        [ "$rc" -eq 124 ] && echo "== $name TIMED OUT after ${limit}s" | tee -a "$LOG"
        echo "== $name FAILED (exit $rc, $((SECONDS - start))s)" | tee -a "$LOG"
        status=1
    fi
}

step parity 75 "$PY" benchmarks/bench_gpu.py --step parity --json "$OUT/parity.json" ${SMOKE[@]+"${SMOKE[@]}"}
step pytest-cuda 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_triton_scan.py -k cuda
step floor 45 "$PY" benchmarks/bench_gpu.py --step floor --json "$OUT/floor.json" ${SMOKE[@]+"${SMOKE[@]}"}
step table 150 "$PY" benchmarks/bench_gpu.py --step table --json "$OUT/table.json" ${SMOKE[@]+"${SMOKE[@]}"}
step compile 200 "$PY" benchmarks/bench_gpu.py --step compile --json "$OUT/compile.json" ${SMOKE[@]+"${SMOKE[@]}"}
step profile 45 "$PY" benchmarks/bench_gpu.py --step profile --json "$OUT/profile.json" ${SMOKE[@]+"${SMOKE[@]}"}
VIDEO=${VIDEO:-}
for candidate in ../shared/data/vtest.avi runs/vtest.avi; do
    [ -z "$VIDEO" ] && [ -f "$candidate" ] && VIDEO=$candidate
done
step pytest-train 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_train_eval.py -k cuda
# scenes, checkpoint and per-command JSON stay in runs/gpu_train (the device tool returns few files);
# the summary (gpu_train.json/.md) and the commands' log are copied to $OUT
step train-gpu $((${TRAIN_MINUTES:-3} * 60 + 240)) "$PY" benchmarks/gpu_train.py --out runs/gpu_train \
    --minutes "${TRAIN_MINUTES:-3}" ${VIDEO:+--video "$VIDEO"} ${SMOKE[@]+"${SMOKE[@]}"}
for f in gpu_train.json gpu_train.md gpu_train.log; do
    if [ -f "runs/gpu_train/$f" ]; then cp "runs/gpu_train/$f" "$OUT/"; fi
done

echo "== report" | tee -a "$LOG"
timeout 20 "$PY" benchmarks/bench_gpu.py --report "$OUT" --markdown "$OUT/report.md" 2>&1 | tee -a "$LOG" || true
echo "== device_check finished in ${SECONDS}s, status $status" | tee -a "$LOG"
exit "$status"
