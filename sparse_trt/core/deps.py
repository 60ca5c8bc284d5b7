"""The one guard for heavy optional dependencies: import lazily, explain how to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def _extra(name: str) -> str:
    """How to install one of our extras, from PyPI and from a source checkout."""
    return f"pip install 'sparse_trt[{name}]' (from a source checkout: pip install -e '.[{name}]', or bash scripts/setup.sh dev)"


# module -> (what it is for, how to install it)
_HINTS: dict[str, tuple[str, str]] = {
    "tensorrt_llm": (
        "TensorRT-LLM engine export/build/run",
        "use NVIDIA's TensorRT-LLM 1.2 release container (see docker/README.md): "
        "docker build -f docker/Dockerfile -t sparse-trt . ; or `pip install 'sparse_trt[trtllm]'` "
        "with NVIDIA's package index on a CUDA machine. Releases after 1.2.x / 1.3.0rc20 removed --weight_sparsity.",
    ),
    "tensorrt": ("TensorRT GEMM probes", "pip install tensorrt (CUDA machine; NVIDIA's index), or use the TensorRT-LLM container"),
    "tritonclient": ("Triton client and config protobufs", _extra("triton")),
    "pytriton": ("the bundled tritonserver binary", _extra("triton")),
    "pynvml": ("GPU memory readings through NVML", _extra("bench")),
    "matplotlib": ("PNG plots in reports", _extra("bench")),
    "onnx": ("one-layer ONNX GEMM graphs", _extra("onnx")),
    "onnxruntime": ("running ONNX GEMM graphs on CPU", _extra("onnx")),
    "gguf": ("loading .gguf model files", _extra("demo")),
    "accelerate": ("loading .gguf model files", _extra("demo")),
    "modelopt": ("cross-checking exports against NVIDIA ModelOpt", "pip install nvidia-modelopt==0.47.0"),
    "lm_eval": ("lm-evaluation-harness tasks (eval --tasks)", _extra("lm-eval")),
}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError saying what it is for and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        what, how = _HINTS.get(top, (purpose or module, f"pip install {top}"))
        raise MissingDependencyError(
            f"'{module}' is needed for {purpose or what} but could not be imported ({e})",
            fix=how,
        ) from None


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
