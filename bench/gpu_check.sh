#!/usr/bin/env bash
# The GPU check, in one command, on a CUDA machine (none is needed to develop factembed):
#   bash bench/gpu_check.sh            -> bench/results/gpu/{gpu_check.log,tests.txt,step_speed.*,convergence.*}
# 1. tests/training/test_cuda.py and tests/training/test_cuda_graphs.py (the kernel against float64, CPU vs GPU runs,
# resume, save/load on CUDA; graphed vs eager steps, no sync in the steady loop, re-capture after the
# decay, the user's path from device memory); 2. steps/s of the reference and default recipes at
# TCGA shape (fp32, bf16), eager and graphed, launches and syncs per step, the user's path (a NumPy
# array to fit) against the bench path; 3. time to quality at
# TCGA shape (planted 10,344 x 19,962) on CUDA (the defaults' full run; the reference's first 5,000
# steps); 4. the rest of the test suite with CUDA visible; then, while GPU_CHECK_BUDGET_S (default
# 480 s) lasts: 5. the defaults with 4x the pairs per step (a GPU recipe, item 4 of issue 23: time to
# quality against 3.'s defaults); 6. the defaults in bf16 on the same matrix (precision parity); 7. the
# reference's whole run.
# Every phase has its own time limit and a failed phase does not stop the next one, so a short lease
# still brings back what finished; everything goes to $OUT (<= 8 files: the device tool's limit).
# Python: $PY, else ./.venv/bin/python, else a python3 that has torch (a GPU image's own; src/ is put
# on PYTHONPATH), else scripts/setup.sh makes .venv.
# GPU_CHECK_QUICK=1 runs tiny versions of 2, 3, 5, 6 on the CPU, skips 1 and 4 (how CI tests this script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python
  elif python3 -c "import torch, numpy, scipy, sklearn, safetensors" >/dev/null 2>&1; then
    PY=python3; export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  else bash scripts/setup.sh && PY=.venv/bin/python; fi
fi
BUDGET=${GPU_CHECK_BUDGET_S:-480}
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "== [gpu_check $(date +%T), ${SECONDS} s] $*" | tee -a "$LOG"; }
phase() {  # phase NAME LIMIT_S COMMAND...: run with a time limit; its output to the log; go on if it fails
  local name=$1 limit=$2; shift 2
  say "$name (limit ${limit} s)"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=$?
  say "$name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
  [ $rc = 0 ] || FAILED="$FAILED $name"
}
left() { echo $(( BUDGET - SECONDS )); }
FAILED=""
if [ "${GPU_CHECK_QUICK:-0}" = "1" ]; then
  DEVICE=cpu; QUICK=--quick; PRECISIONS=fp32; N=60; REF_STEPS=5000
else
  DEVICE=cuda; QUICK=; PRECISIONS=fp32,bf16; N=10344; REF_STEPS=5000
  (nvidia-smi; "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))") 2>&1 | tee -a "$LOG"
  if ! "$PY" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available to torch'" 2>&1 | tee -a "$LOG"; then
    say "no CUDA: stopping"; exit 1
  fi
  OMP_NUM_THREADS=4 phase tests-cuda 150 "$PY" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py \
    tests/training/test_cuda_graphs.py
fi
phase step-speed 240 "$PY" bench/bench_step_speed.py --device "$DEVICE" --precisions "$PRECISIONS" --windows 3 \
  --pairs-scales 1,4,16 --out "$OUT" $QUICK
# the reference's 100,000 steps may not fit a short GPU lease: its first 5,000 (time extrapolated), as on the CPU
phase convergence 300 "$PY" bench/bench_convergence.py --device "$DEVICE" --datasets planted --planted-n "$N" \
  --planted-m 19962 --reference-steps "$REF_STEPS" --reference-evals 4 --evals 10 --key planted_full --out "$OUT" $QUICK
if [ -z "$QUICK" ]; then      # the rest of the suite, CUDA visible (in parallel where pytest-xdist is there)
  XDIST=$("$PY" -c "import xdist" >/dev/null 2>&1 && echo "-n ${GPU_CHECK_TEST_JOBS:-6}")
  lim=$(left); [ "$lim" -lt 240 ] || lim=240; [ "$lim" -gt 60 ] || lim=60
  OMP_NUM_THREADS=2 phase tests "$lim" "$PY" -m pytest -q -p no:cacheprovider $XDIST --ignore=tests/training/test_cuda.py \
    --ignore=tests/training/test_cuda_graphs.py
  grep -E "passed|failed|error" "$LOG" | tail -6 > "$OUT/tests.txt"
fi
if [ "$(left)" -gt 60 ]; then   # a GPU recipe? the defaults with 4x the pairs per step (each side x2), same rule
  phase gpu-recipe-x4 "$(left)" "$PY" bench/bench_convergence.py --device "$DEVICE" --datasets planted --planted-n "$N" \
    --planted-m 19962 --recipes fast --pairs-scale 4 --evals 10 --key planted_full_x4 --merge --out "$OUT" $QUICK
fi
if [ "$(left)" -gt 60 ]; then
  phase bf16-defaults "$(left)" "$PY" bench/bench_convergence.py --device "$DEVICE" --datasets planted --planted-n "$N" \
    --planted-m 19962 --recipes fast --precision bf16 --evals 10 --key planted_full_bf16 --merge --out "$OUT" $QUICK
fi
if [ "$(left)" -gt 60 ]; then
  phase reference-whole "$(left)" "$PY" bench/bench_convergence.py --device "$DEVICE" --datasets planted \
    --planted-n "$N" --planted-m 19962 --recipes reference --evals 10 --key planted_full_reference --merge \
    --out "$OUT" $QUICK
fi
say "done; failed phases:${FAILED:- none}; results in $OUT"
[ -z "$FAILED" ]
