#!/usr/bin/env bash
# One GPU, under 8 minutes, nothing to download:
#   1. bench gemm on 7B-class linear shapes, fp16 and bf16 (torch semi-structured; TensorRT too if installed)
#   2. a model built from a config on the spot (LLaMA-7B shapes, 4 layers), saved dense and 2:4
#   3. bench compare: dense (hf) vs 2:4 (torch-2of4), alternating, paired ratios
#   4. the GPU-marked pytest checks, and a report of everything
# Usage: benchmarks/gpu_check.sh RESULTS_DIR      (figures land in RESULTS_DIR; models in a temp dir, removed)
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh RESULTS_DIR}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ST="$PY -m sparse_trt.cli.main"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODELS="$(mktemp -d "${TMPDIR:-/tmp}/sparse-trt-gpu-check.XXXXXX")"
trap 'rm -rf "$MODELS"' EXIT
SHAPES=4096x4096,4096x11008,11008x4096,14336x4096
FAILED=()
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - t0))s ===" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
$PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), 'cusparselt', torch.backends.cusparselt.is_available())" > "$OUT/torch.txt" 2>&1

step gemm-fp16 120 $ST bench gemm --shapes "$SHAPES" --tokens 1,16,256,2048 --dtype float16 --device cuda \
  --warmup 10 --iters 30 -o "$OUT/gemm-fp16.json" --overwrite
step gemm-bf16 120 $ST bench gemm --shapes "$SHAPES" --tokens 1,16,256,2048 --dtype bfloat16 --device cuda \
  --warmup 10 --iters 30 --no-onnx -o "$OUT/gemm-bf16.json" --overwrite
step synth 90 $ST bench synth "$MODELS/llama7b-4l" --config llama-7b --layers 4 --dtype float16 --overwrite
step compare 150 $ST bench compare "$MODELS/llama7b-4l/dense" "$MODELS/llama7b-4l/sparse-2of4" \
  --dense-backend hf --sparse-backend torch-2of4 --device cuda --dtype float16 \
  --batch-sizes 1,16 --input-lens 128 --output-lens 64 --warmup 2 --iters 6 \
  --dense-label dense-fp16 --sparse-label torch-2of4-fp16 -o "$OUT/compare-torch-2of4.json" --overwrite
step pytest-gpu 60 $PY -m pytest -q -m gpu "$ROOT/tests/test_bench_gpu.py"
REPORT_IN=()
for f in "$OUT"/gemm-fp16.json "$OUT"/gemm-bf16.json "$OUT"/compare-torch-2of4.json; do [ -s "$f" ] && REPORT_IN+=("$f"); done
if [ ${#REPORT_IN[@]} -gt 0 ]; then
  step report 60 $ST report "${REPORT_IN[@]}" -o "$OUT/report" --gpu-hour-usd 2.5
fi
echo "results in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED steps: ${FAILED[*]}" | tee -a "$OUT/steps.txt"
  exit 1
fi
