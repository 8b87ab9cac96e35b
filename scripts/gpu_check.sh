#!/usr/bin/env bash
# One prepared GPU run (H100/H200): parity at highest and default precision in fp32 and bf16,
# then the benchmark. Timeouts cap it at under 11 minutes (4 x 70 s + 2 x 180 s);
# each step tees its output at once, so a timed-out step still leaves the others. Untested on a GPU.
# Uses the machine's preinstalled torch/jax/flax/optax (no install): PYTHONPATH=. instead.
# Writes everything under ${OUT:-gpu-out}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, jax, flax, optax; print('torch', torch.__version__, 'jax', jax.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt"

# 1. parity on GPU (float64 reference on CPU): a few variants, every precision setting. 5 samples
# so that the rank test judges the gradient-derived quantities (see parity.judgement).
for dtype in fp32 bf16; do
  for prec in highest default; do
    timeout 70 $PY -m parity check --device gpu --dtype "$dtype" --precision "$prec" \
      --models resnet20,resnet50 --samples 5 --steps 10 --report "$OUT/check-$dtype-$prec" \
      2>&1 | tail -12 | tee "$OUT/check-$dtype-$prec.txt"
  done
done

# 2. benchmark: resnet50 b256 224px and vgg16 b64 224px, bf16 and fp32, all three frameworks.
for dtype in bf16 fp32; do
  timeout 110 $PY -m parity bench --device gpu --dtype "$dtype" --models resnet50 --batch 256 \
    --image-size 224 --steps 20 --warmup 5 --frameworks jax,torch-compile,torch-eager \
    --out "$OUT/bench-resnet50-$dtype" 2>&1 | tail -15 \
    | tee "$OUT/bench-resnet50-$dtype.txt"
  timeout 70 $PY -m parity bench --device gpu --dtype "$dtype" --models vgg16 --batch 64 \
    --image-size 224 --steps 20 --warmup 5 --frameworks jax,torch-compile,torch-eager \
    --out "$OUT/bench-vgg16-$dtype" 2>&1 | tail -15 \
    | tee "$OUT/bench-vgg16-$dtype.txt"
done

# 3. data-parallel, only on machines with several GPUs: parity (JAX over a Mesh, torch DDP over
# NCCL) and the scaling of resnet50 at 64 images per GPU.
NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -gt 1 ]; then
  timeout 300 $PY -m parity check --device gpu --devices "$NGPU" --models resnet20 --batch 8 --steps 10 \
    --samples 3 --report "$OUT/check-dp" 2>&1 | tail -12 | tee "$OUT/check-dp.txt"
  timeout 300 $PY -m parity bench --device gpu --devices "$NGPU" --models resnet50 --batch 64 \
    --image-size 224 --steps 20 --warmup 5 --frameworks jax,torch-compile \
    --out "$OUT/bench-dp" 2>&1 | tail -15 | tee "$OUT/bench-dp.txt"
fi
