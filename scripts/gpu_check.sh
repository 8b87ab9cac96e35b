#!/usr/bin/env bash
# One prepared GPU run (H100/H200, one command of at most 10 minutes, at most 8 files back): a
# preflight, then parity and throughput steps in the order of what they prove, each under the time
# left of one budget (GPU_CHECK_BUDGET seconds, default 420), each writing its own log and report as
# it goes, so a step that runs out of time loses only itself. At the end everything is packed into
# $OUT/gpu-check.tar.gz beside $OUT/summary.md (one line per step: status, seconds, last line) and
# $OUT/preflight.txt: three files.
#
# GPU_CHECK_CPU=1 rehearses the same script on CPU with tiny sizes (CI runs it: tests/test_gpu_check.py);
# GPU_CHECK_STEPS="preflight bench-resnet50-bf16" runs only the steps named (a rerun of what failed).
# Exit status 0 only when every step that was to run ran and passed.
# Uses the machine's preinstalled torch/jax/flax/optax (no install): PYTHONPATH=. instead.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
CPU=${GPU_CHECK_CPU:-0}
BUDGET=${GPU_CHECK_BUDGET:-420}
RESERVE=15  # seconds kept for packing
PY=${PY:-python3}
WORK="$OUT/work"
mkdir -p "$WORK"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU at start unless told not to; torch shares the device in the same processes
export XLA_PYTHON_CLIENT_PREALLOCATE=false
START=$(date +%s)
SUMMARY="$OUT/summary.md"
echo "# GPU check ($([ "$CPU" = 1 ] && echo "CPU rehearsal" || echo GPU)), budget ${BUDGET} s" > "$SUMMARY"
echo "" >> "$SUMMARY"
echo "| step | status | seconds | last line |" >> "$SUMMARY"
echo "|---|---|---|---|" >> "$SUMMARY"

FAILED=0
ONLY=${GPU_CHECK_STEPS:-}
left() { echo $((BUDGET - RESERVE - ($(date +%s) - START))); }

# step NAME CAP MIN CMD...: run CMD for at most min(CAP, time left); skipped when under MIN seconds are
# left. Its whole output goes to $WORK/NAME.log as it is written; its status to the summary.
step() {
  local name=$1 cap=$2 min=$3
  shift 3
  if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $name "* ]]; then
    return
  fi
  local t; t=$(left)
  if [ "$t" -lt "$min" ]; then
    echo "| $name | skipped (${t} s left, needs ${min}) | 0 | |" >> "$SUMMARY"
    echo "gpu_check: $name skipped (${t} s left)"
    FAILED=1
    return
  fi
  [ "$t" -gt "$cap" ] && t=$cap
  echo "gpu_check: $name (at most ${t} s)"
  local s0; s0=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$WORK/$name.log" 2>&1
  local rc=$? took=$(( $(date +%s) - s0 ))
  local status="ok"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="timed out after ${t} s"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
  local last; last=$(tr '\r' '\n' < "$WORK/$name.log" | grep -v '^\s*$' | tail -1 | cut -c1-160 | tr '|' '/')
  echo "| $name | $status | $took | $last |" >> "$SUMMARY"
  [ "$status" = ok ] || FAILED=1
  echo "gpu_check: $name $status in ${took} s"
}

if [ "$CPU" = 1 ]; then
  # the same steps at the smallest sizes: what is rehearsed is the script, not the numbers
  DEV=cpu; MODELS_CHECK=resnet20; BIG=resnet20; BATCH=2; SIZE=32; FW=jax,torch-eager; STEPS=2; NGPU=1
  CHECK=(--samples 1 --steps 1 --batch 2); CHECK_MIN=20; BENCH_MIN=20
else
  DEV=gpu; MODELS_CHECK=resnet20; BIG=resnet50; BATCH=256; SIZE=224; FW=jax,torch-compile,torch-eager; STEPS=20
  CHECK=(--samples 5 --steps 3); CHECK_MIN=60; BENCH_MIN=90
  # MIG instances are listed as indented "MIG ..." lines under their GPU: count the GPUs only
  NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi

# 0. preflight: versions, devices, and torch and JAX computing on the device in one process (what the
# check does). Nothing else runs if it fails.
step preflight 120 20 "$PY" scripts/gpu_preflight.py --device "$DEV"
cp "$WORK/preflight.log" "$OUT/preflight.txt" 2>/dev/null
if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" preflight "* ]]; then
  STEPS_OK=1
elif ! tail -1 "$WORK/preflight.log" 2>/dev/null | grep -q '^preflight: ok'; then
  echo "gpu_check: preflight failed; see $OUT/preflight.txt"
  STEPS_OK=0; FAILED=1
else
  STEPS_OK=1
fi

if [ "$STEPS_OK" = 1 ]; then
  # 1. parity on the device (float64 reference on CPU), fp32 at highest precision: the core claim.
  # 5 samples so that the rank test judges the gradient-derived quantities (docs/parity.md).
  step check-fp32-highest 150 "$CHECK_MIN" "$PY" -m parity check --device "$DEV" --dtype fp32 --precision highest \
    --models "$MODELS_CHECK" "${CHECK[@]}" --report "$WORK/check-fp32-highest"
  # 2. throughput, bf16, the ImageNet model: JIT-compiled Flax against torch.compile
  step bench-$BIG-bf16 200 "$BENCH_MIN" "$PY" -m parity bench --device "$DEV" --dtype bf16 --models "$BIG" \
    --batch "$BATCH" --image-size "$SIZE" --steps "$STEPS" --warmup 3 --frameworks "$FW" \
    --out "$WORK/bench-$BIG-bf16"
  # 3. parity in bf16 at the default precision (TF32 matmuls where fp32 remains)
  step check-bf16-default 100 "$CHECK_MIN" "$PY" -m parity check --device "$DEV" --dtype bf16 --precision default \
    --models "$MODELS_CHECK" "${CHECK[@]}" --report "$WORK/check-bf16-default"
  # 4. throughput in fp32
  step bench-$BIG-fp32 150 "$BENCH_MIN" "$PY" -m parity bench --device "$DEV" --dtype fp32 --models "$BIG" \
    --batch "$BATCH" --image-size "$SIZE" --steps "$STEPS" --warmup 3 --frameworks "$FW" \
    --out "$WORK/bench-$BIG-fp32"
  # 5. data-parallel, only with several GPUs: JAX over a Mesh and torch DDP over NCCL
  if [ "$NGPU" -gt 1 ]; then
    step check-dp 150 90 "$PY" -m parity check --device gpu --devices "$NGPU" --models resnet20 --batch 8 \
      --steps 3 --samples 1 --report "$WORK/check-dp"
  elif [ -z "$ONLY" ]; then
    echo "| check-dp | not run (${NGPU} GPU) | 0 | |" >> "$SUMMARY"
  fi
fi

# pack: the summary and the preflight beside one archive of every log and report
echo "" >> "$SUMMARY"
echo "total $(( $(date +%s) - START )) s; logs and reports: gpu-check.tar.gz" >> "$SUMMARY"
tar -czf "$OUT/gpu-check.tar.gz" -C "$OUT" work
rm -rf "$WORK"
cat "$SUMMARY"
exit "$FAILED"
