#!/usr/bin/env bash
# One GPU (H100/H200 class), at most 8 minutes in all, nothing downloaded except, where the machine can reach
# a package index, the Python packages the preflight finds missing:
#   0. preflight: a CUDA GPU (else exit at once), the CLI's dependencies (installed or named), optional
#      pytest / matplotlib / onnx / nvidia-ml-py (steps that need a missing one are skipped or degraded)
#   1. bench gemm on 7B-class linear shapes at decode (1, 16 tokens) and prefill (512, 2048 tokens) sizes,
#      fp16 and bf16 (torch semi-structured kernels; TensorRT too where it is installed), and fp8 (E4M3: dense
#      torch._scaled_mm vs cuSPARSELt 2:4; a card or torch without FP8 cuSPARSELt gives explained n/a rows)
#   2. a LLaMA-7B-shaped model (2 layers) built from a config on the spot, dense vs 2:4 (hf vs torch-2of4)
#   3. a SmolLM2-135M-shaped model (all 30 layers; benchmarks/smollm2-135m.config.json, random weights:
#      kernel speed does not depend on the values), dense vs 2:4; SMOLLM2_DENSE / SMOLLM2_2OF4 may name real
#      folders (a pruned SmolLM2 and its dense original) to use instead
#   4. the GPU-marked pytest checks, and a report of everything
# Each step runs under `timeout`; the limits sum to at most BUDGET_S (480 s), and a step never gets more than
# what is left of it.
# Usage: benchmarks/gpu_check.sh RESULTS_DIR      (figures land in RESULTS_DIR; models in a temp dir, removed)
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh RESULTS_DIR}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
START=$SECONDS

# --- no GPU: stop before anything else ----------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); it needs one CUDA GPU (H100/H200" >&2
  echo "class). Nothing was run. On a CPU machine run the unit tests instead: python3 -m pytest -q" >&2
  exit 2
fi
if ! timeout 60 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check.sh: $PY has no CUDA torch (torch missing, CPU-only build, or no usable driver); nothing was run." >&2
  echo "Fix: install a CUDA build of torch for this driver (https://pytorch.org/get-started/locally/)." >&2
  exit 2
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ST=("$PY" -m sparse_trt.cli.main)
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
MODELS="$(mktemp -d "${TMPDIR:-/tmp}/sparse-trt-gpu-check.XXXXXX")"
trap 'rm -rf "$MODELS"' EXIT
: > "$OUT/steps.txt"
FAILED=()
SKIPPED=()

left() { echo $(( BUDGET_S - (SECONDS - START) )); }
step() {  # step NAME LIMIT_S CMD...   (the limit is capped to what is left of the budget)
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  if [ "$rest" -le 5 ]; then
    echo "=== $name: skipped, the ${BUDGET_S}s budget is spent ===" | tee -a "$OUT/steps.txt"
    SKIPPED+=("$name"); return
  fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  echo "=== $name (limit ${limit}s, ${rest}s of the budget left) ==="
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "(timed out after ${limit}s)" | tee -a "$OUT/$name.log"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s ===" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}
has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# --- preflight: what the CLI and the steps need --------------------------------------------------------------
declare -A PIP=([typer]="typer>=0.12" [rich]="rich>=13" [transformers]="transformers" [safetensors]="safetensors"
                [numpy]="numpy" [pytest]="pytest>=8" [matplotlib]="matplotlib>=3.7" [pynvml]="nvidia-ml-py>=12"
                [onnx]="onnx>=1.15" [onnxruntime]="onnxruntime>=1.17")
REQUIRED=(typer rich transformers safetensors numpy)
OPTIONAL=(pytest matplotlib pynvml onnx onnxruntime)
missing=()
for m in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do has "$m" || missing+=("$m"); done
if [ ${#missing[@]} -gt 0 ] && [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
  pkgs=(); for m in "${missing[@]}"; do pkgs+=("${PIP[$m]}"); done
  echo "preflight: installing ${pkgs[*]} (30 s at most; set GPU_CHECK_NO_INSTALL=1 to skip)"
  timeout 30 "$PY" -m pip install -q --disable-pip-version-check --retries 0 --timeout 5 "${pkgs[@]}" \
    > "$OUT/preflight-pip.log" 2>&1 || echo "preflight: pip could not install them (see $OUT/preflight-pip.log)"
fi
still=()
for m in "${REQUIRED[@]}"; do has "$m" || still+=("$m"); done
if [ ${#still[@]} -gt 0 ]; then
  pkgs=(); for m in "${still[@]}"; do pkgs+=("'${PIP[$m]}'"); done
  echo "gpu_check.sh: the sparse-trt CLI needs ${still[*]}, which are missing and could not be installed." >&2
  echo "Fix: $PY -m pip install ${pkgs[*]}   (or pip install -e '$ROOT[bench]'), then run it again." >&2
  exit 3
fi
NO_ONNX=(); { has onnx && has onnxruntime; } || { NO_ONNX=(--no-onnx); echo "preflight: no onnx/onnxruntime: ONNX graph checks skipped"; }
NO_PLOTS=(); has matplotlib || { NO_PLOTS=(--no-plots); echo "preflight: no matplotlib: report without plots (--no-plots)"; }
has pynvml || echo "preflight: no nvidia-ml-py: NVML memory readings will be recorded as unavailable"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), \
torch.cuda.get_device_capability(0), 'cusparselt', torch.backends.cusparselt.is_available())"
  uptime
} > "$OUT/machine.txt" 2>&1
# FP8 2:4 (sm89+, cuSPARSELt 0.6.2+): one tiny call of both FP8 GEMMs in its own process, so that a crash or hang
# of cuSPARSELt on an unsupported card costs this line, not a step
FP8_PROBE=$(timeout 30 "$PY" -c "import torch
from sparse_trt.bench.backends.torch_2of4 import fp8_probe
mode, why = fp8_probe(torch.device('cuda', 0))
print(('ok: ' if mode else 'n/a: ') + why)" 2>"$OUT/fp8-probe.err" | tail -n 1)
case "$FP8_PROBE" in ok:*|n/a:*) ;; *) FP8_PROBE="crashed or timed out (see fp8-probe.err)";; esac
echo "fp8 2:4 probe: $FP8_PROBE" >> "$OUT/machine.txt"
cat "$OUT/machine.txt"

# --- 1. GEMMs at decode and prefill token counts -------------------------------------------------------------
SHAPES=4096x4096,4096x11008,11008x4096,14336x4096
TOKENS=1,16,512,2048
step gemm-fp16 75 "${ST[@]}" bench gemm --shapes "$SHAPES" --tokens "$TOKENS" --dtype float16 --device cuda \
  --warmup 10 --iters 30 "${NO_ONNX[@]}" -o "$OUT/gemm-fp16.json" --overwrite
step gemm-bf16 60 "${ST[@]}" bench gemm --shapes "$SHAPES" --tokens "$TOKENS" --dtype bfloat16 --device cuda \
  --warmup 10 --iters 30 --no-onnx -o "$OUT/gemm-bf16.json" --overwrite
# FP8: where the probe answered (ok, or n/a with its reason) the step runs; without FP8 support every row is
# 'not available: why' and the step still passes. Only a probe that crashed or hung skips it (not a failure).
case "$FP8_PROBE" in
  ok:*|n/a:*)
    step gemm-fp8 40 "${ST[@]}" bench gemm --shapes "$SHAPES" --tokens "$TOKENS" --dtype fp8 --device cuda \
      --warmup 10 --iters 30 --no-onnx --no-tensorrt -o "$OUT/gemm-fp8.json" --overwrite ;;
  *)
    echo "=== gemm-fp8: n/a, the FP8 probe $FP8_PROBE; not counted as a failure ===" | tee -a "$OUT/steps.txt"
    SKIPPED+=(gemm-fp8) ;;
esac

# --- 2. a 7B-shaped model: hf (dense) vs torch-2of4 -----------------------------------------------------------
step synth-7b 40 "${ST[@]}" bench synth "$MODELS/llama7b" --config llama-7b --layers 2 --dtype float16 --overwrite
step compare-7b 90 "${ST[@]}" bench compare "$MODELS/llama7b/dense" "$MODELS/llama7b/sparse-2of4" \
  --dense-backend hf --sparse-backend torch-2of4 --device cuda --dtype float16 \
  --batch-sizes 1,16 --input-lens 128 --output-lens 32 --warmup 1 --iters 3 \
  --dense-label llama7b-2l-dense --sparse-label llama7b-2l-torch-2of4 -o "$OUT/compare-7b.json" --overwrite

# --- 3. SmolLM2-135M: the real pruned model when given, else its shapes ---------------------------------------
if [ -n "${SMOLLM2_DENSE:-}" ] && [ -n "${SMOLLM2_2OF4:-}" ]; then
  SM_DENSE=$SMOLLM2_DENSE; SM_SPARSE=$SMOLLM2_2OF4; SM_LABEL=smollm2
else
  step synth-smollm2 30 "${ST[@]}" bench synth "$MODELS/smollm2" --config "$ROOT/benchmarks/smollm2-135m.config.json" \
    --dtype float16 --overwrite
  SM_DENSE=$MODELS/smollm2/dense; SM_SPARSE=$MODELS/smollm2/sparse-2of4; SM_LABEL=smollm2-shaped
fi
step compare-smollm2 80 "${ST[@]}" bench compare "$SM_DENSE" "$SM_SPARSE" \
  --dense-backend hf --sparse-backend torch-2of4 --device cuda --dtype float16 \
  --batch-sizes 1,16 --input-lens 128 --output-lens 32 --warmup 1 --iters 3 \
  --dense-label "$SM_LABEL-dense" --sparse-label "$SM_LABEL-torch-2of4" -o "$OUT/compare-smollm2.json" --overwrite

# --- 4. GPU tests and the report ------------------------------------------------------------------------------
if has pytest; then
  step pytest-gpu 40 "$PY" -m pytest -q -rs -m gpu "$ROOT/tests/test_bench_gpu.py" "$ROOT/tests/test_gemm_fp8.py" "$ROOT/tests/test_bench_fp8_model.py"
else
  echo "=== pytest-gpu: skipped, pytest is missing (pip install pytest) ===" | tee -a "$OUT/steps.txt"; SKIPPED+=(pytest-gpu)
fi
REPORT_IN=()
for f in "$OUT"/gemm-fp16.json "$OUT"/gemm-bf16.json "$OUT"/gemm-fp8.json "$OUT"/compare-7b.json "$OUT"/compare-smollm2.json; do
  [ -s "$f" ] && REPORT_IN+=("$f")
done
if [ ${#REPORT_IN[@]} -gt 0 ]; then
  step report 25 "${ST[@]}" report "${REPORT_IN[@]}" -o "$OUT/report" --gpu-hour-usd 2.5 "${NO_PLOTS[@]}"
fi

echo "results in $OUT ($((SECONDS - START))s of the ${BUDGET_S}s budget)" | tee -a "$OUT/steps.txt"
[ ${#SKIPPED[@]} -gt 0 ] && echo "skipped steps: ${SKIPPED[*]}" | tee -a "$OUT/steps.txt"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED steps: ${FAILED[*]}" | tee -a "$OUT/steps.txt"
  exit 1
fi
exit 0
