#!/usr/bin/env bash
# The GPU check, in one command, on a CUDA machine (none is needed to develop factembed):
#   bash bench/gpu_check.sh            -> bench/results/gpu/{tests,step_speed,convergence}.*
# 1. the test suite with CUDA visible; 2. steps/s of the reference and default recipes at
# TCGA shape (fp32, bf16); 3. time to quality at TCGA shape (planted 10,344 x 19,962) on CUDA
# (the defaults' full run; the reference's first 5,000 steps).
# GPU_CHECK_QUICK=1 runs tiny versions of 2 and 3 on the CPU and skips 1 (how CI tests this script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
if [ ! -x "$PY" ]; then bash scripts/setup.sh; fi
if [ "${GPU_CHECK_QUICK:-0}" = "1" ]; then
  DEVICE=cpu; QUICK=--quick; PRECISIONS=fp32
else
  DEVICE=cuda; QUICK=; PRECISIONS=fp32,bf16
  (nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available to torch'"
  "$PY" -m pytest -q -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.txt"
fi
"$PY" bench/bench_step_speed.py --device "$DEVICE" --precisions "$PRECISIONS" --out "$OUT" $QUICK \
  | tee "$OUT/step_speed.txt"
# the reference's 100,000 steps would not fit a short GPU lease: its first 5,000, time extrapolated (as on the CPU)
"$PY" bench/bench_convergence.py --device "$DEVICE" --datasets planted --planted-n 10344 --planted-m 19962 \
  --reference-steps 5000 --reference-evals 4 --evals 10 --out "$OUT" $QUICK | tee "$OUT/convergence.txt"
echo "gpu_check: results in $OUT"
