#!/usr/bin/env bash
# labelloop on a GPU: the real workers on CUDA and the benchmarks against raw Ultralytics.
#
#     bash scripts/gpu-check.sh                      # on a machine with an NVIDIA GPU (< 8 min)
#     GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh # CPU dry run with tiny sizes (proves the script)
#
# Prerequisites (nothing is downloaded: GPU machines often have no internet):
#   - the repository's .venv (or PYTHON=/path/to/python) with labelloop[ml] and a CUDA build of
#     torch; Ultralytics' model YAMLs are used, no weights are fetched;
#   - redis-server on PATH (the benchmarks start their own on loopback);
#   - optional: Label Studio 1.23.2's virtual environment at $LABELLOOP_LS_VENV (default
#     ~/.cache/labelloop/label-studio-1.23.2): then a real train worker trains a real project
#     on the GPU too (tests/test_train_worker_labelstudio.py); without it that step says skipped.
#
# Steps: the fork check (a real predict+train worker whose pool child loads a model on CUDA while
# its main process never calls into torch.cuda), bench.train (labelloop's training child vs
# `yolo train`), bench.predict (receiver -> Celery -> predict worker vs `model.predict`),
# bench.swap (promote/rollback under load, 2 predict processes), then the ratios in one block.
# Exit status: 0 when every step ran, 1 when one failed, 2 when no CUDA device is present.
# Environment: GPU_CHECK_DEVICE (default 0: the first visible GPU; `cpu` for the dry run),
# GPU_CHECK_WORKDIR (default var/gpu-check), GPU_CHECK_LS (1/0: run the Label Studio step;
# default 1 on a GPU when Label Studio is installed, 0 in the dry run).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-0}
WORK=$(realpath -m "${GPU_CHECK_WORKDIR:-var/gpu-check}")
LS_VENV=${LABELLOOP_LS_VENV:-$HOME/.cache/labelloop/label-studio-1.23.2}

if [[ ! -x $PY ]]; then
  echo "gpu-check: no Python at $PY: carry the repository's .venv or set PYTHON" >&2
  exit 2
fi
if [[ $DEVICE != cpu ]]; then
  if ! why=$("$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device")
print(torch.cuda.get_device_name(0))' 2>&1); then
    echo "gpu-check: no CUDA device: ${why##*$'\n'}; GPU_CHECK_DEVICE=cpu runs the CPU dry run" >&2
    exit 2
  fi
  GPU_NAME=$why
  SIZES_TRAIN=(--epochs 10 --images 96 --imgsz 640 --batch 16 --workers 4)
  SIZES_PREDICT=(--images 32 --imgsz 640 --rounds 3)
  SIZES_SWAP=(--swaps 6 --clients 2 --phase-s 6 --imgsz 640)
  FORK_CHECK=(tests/workers/test_cuda_fork.py)
  RUN_LS=${GPU_CHECK_LS:-$([[ -x $LS_VENV/bin/label-studio ]] && echo 1 || echo 0)}
else
  GPU_NAME="none (CPU dry run)"
  SIZES_TRAIN=(--epochs 1 --images 8 --imgsz 64 --batch 4 --workers 0)
  SIZES_PREDICT=(--images 4 --imgsz 64 --rounds 1)
  SIZES_SWAP=(--swaps 2 --clients 1 --phase-s 2 --imgsz 64)
  FORK_CHECK=(--collect-only tests/workers/test_cuda_fork.py)  # the test suite runs it itself
  RUN_LS=${GPU_CHECK_LS:-0}
fi

export LABELLOOP_DEVICE=$DEVICE LABELLOOP_OFFLINE=true YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
export LABELLOOP_LS_VENV=$LS_VENV
mkdir -p "$WORK/logs"
START=$SECONDS
FAILED=()

step() {  # step NAME COMMAND...: run, log to $WORK/logs/NAME.log, echo its last lines
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*"
  if "$@" >"$WORK/logs/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - t0)) s"
  else
    echo "   FAILED in $((SECONDS - t0)) s (log: $WORK/logs/$name.log)"
    tail -n 15 "$WORK/logs/$name.log" | sed 's/^/   | /'
    FAILED+=("$name")
  fi
}

echo "gpu-check: device $DEVICE ($GPU_NAME), python $PY, work $WORK"
step fork "$PY" -m pytest -q -p no:cacheprovider "${FORK_CHECK[@]}"
if [[ $RUN_LS == 1 ]]; then
  step train-worker "$PY" -m pytest -q -p no:cacheprovider tests/test_train_worker_labelstudio.py -k retried
else
  echo "== train-worker: skipped (GPU_CHECK_LS=0 or no Label Studio at $LS_VENV)"
fi
step bench-train "$PY" -m bench.train "${SIZES_TRAIN[@]}" --device "$DEVICE" --workdir "$WORK/train"
step bench-predict "$PY" -m bench.predict "${SIZES_PREDICT[@]}" --device "$DEVICE" --workdir "$WORK/predict"
# The same workdir as bench.predict: its small model is trained once.
step bench-swap "$PY" -m bench.swap "${SIZES_SWAP[@]}" --device "$DEVICE" --workdir "$WORK/predict"

echo
echo "== gpu-check results: device $DEVICE ($GPU_NAME), $((SECONDS - START)) s in all"
for name in bench-train bench-predict bench-swap; do
  [[ -f $WORK/logs/$name.log ]] || continue
  echo "-- $name"
  grep -E "^\s*(training:|labelloop training step|yolo train:|ratio|/predict overhead|batch|hot-swap|swap latency|p99|steady:|during:|after:|[0-9]+ )" \
    "$WORK/logs/$name.log" | sed 's/^/   /'
done
if ((${#FAILED[@]})); then
  echo "gpu-check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu-check: every step ran"
