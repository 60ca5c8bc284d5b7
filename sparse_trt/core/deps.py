"""The one guard for heavy optional dependencies: import lazily, explain how to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# module -> (what it is for, how to install it)
_HINTS: dict[str, tuple[str, str]] = {
    "tensorrt_llm": (
        "TensorRT-LLM engine export/build/run",
        "use NVIDIA's TensorRT-LLM 1.2 release container (see docker/README.md): "
        "docker build -f docker/Dockerfile -t sparse-trt . ; or `pip install 'sparse_trt[trtllm]'` "
        "with NVIDIA's package index on a CUDA machine. Releases after 1.2.x / 1.3.0rc20 removed --weight_sparsity.",
    ),
    "tensorrt": ("TensorRT GEMM probes", "pip install tensorrt (CUDA machine; NVIDIA's index), or use the TensorRT-LLM container"),
    "tritonclient": ("Triton client and config protobufs", "pip install 'sparse_trt[triton]'"),
    "pytriton": ("the bundled tritonserver binary", "pip install 'sparse_trt[triton]'"),
    "pynvml": ("GPU memory readings through NVML", "pip install 'sparse_trt[bench]'"),
    "matplotlib": ("PNG plots in reports", "pip install 'sparse_trt[bench]'"),
    "onnx": ("one-layer ONNX GEMM graphs", "pip install 'sparse_trt[onnx]'"),
    "onnxruntime": ("running ONNX GEMM graphs on CPU", "pip install 'sparse_trt[onnx]'"),
    "gguf": ("loading .gguf model files", "pip install 'sparse_trt[demo]'"),
    "accelerate": ("loading .gguf model files", "pip install 'sparse_trt[demo]'"),
    "modelopt": ("cross-checking exports against NVIDIA ModelOpt", "pip install nvidia-modelopt==0.47.0"),
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
