"""One-layer ONNX GEMM graphs carrying real 2:4 weights: Y = X @ W^T with W as an initializer.

Used to give TensorRT a graph it may build with sparse weights allowed, and on CPU to check the graph
(``onnx.checker``) and its numerics (ONNX Runtime vs torch) without TensorRT. The initializer keeps
the 2:4 pattern along the reduction (K = in_features) dimension, which is where TensorRT looks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparse_trt.core.deps import require

from .results import OnnxCheck

_ONNX_DTYPES = {np.dtype(np.float16): "FLOAT16", np.dtype(np.float32): "FLOAT"}
OPSET = 17


def gemm_graph(weight_out_in: np.ndarray, name: str = "gemm") -> Any:
    """ONNX model: input X [tokens, in] (tokens dynamic), initializer W^T [in, out], output Y [tokens, out]."""
    require("onnx", "one-layer ONNX GEMM graphs")
    from onnx import TensorProto, helper, numpy_helper

    w = np.ascontiguousarray(weight_out_in)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {w.shape}")
    if w.dtype not in _ONNX_DTYPES:
        raise ValueError(f"ONNX GEMM graphs are float16 or float32, not {w.dtype}")
    elem = getattr(TensorProto, _ONNX_DTYPES[w.dtype])
    out_f, in_f = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W_t"], ["Y"], name=f"{name}_matmul")],
        name,
        [helper.make_tensor_value_info("X", elem, ["tokens", in_f])],
        [helper.make_tensor_value_info("Y", elem, ["tokens", out_f])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "W_t")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sparse_trt")
    model.ir_version = min(model.ir_version, 8)  # readable by older TensorRT / ONNX Runtime parsers
    return model


def initializer(model: Any, name: str = "W_t") -> np.ndarray:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def is_2of4_along_k(w_t: np.ndarray) -> bool:
    """W^T is [in, out]: every 4 consecutive inputs (rows) per output column hold at most 2 non-zeros."""
    k, n = w_t.shape
    if k % 4:
        return False
    return bool(((w_t.reshape(k // 4, 4, n) != 0).sum(axis=1) <= 2).all())


def check_gemm_graph(weight_out_in: torch.Tensor, tokens: int, seed: int = 0) -> OnnxCheck:
    """Build the graph for a 2:4 weight, run onnx.checker, run it in ONNX Runtime (CPU) vs torch."""
    onnx = require("onnx", "one-layer ONNX GEMM graphs")
    ort = require("onnxruntime", "running ONNX GEMM graphs on CPU")
    w = weight_out_in.detach().cpu()
    np_w = w.numpy()
    model = gemm_graph(np_w)
    try:
        onnx.checker.check_model(model, full_check=True)
        checker = "ok"
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError and friends
        checker = f"failed: {e}"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, w.shape[1], generator=g).to(w.dtype)
    ref = torch.nn.functional.linear(x.float(), w.float())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(["Y"], {"X": x.numpy()})
    err = float((torch.from_numpy(y).float() - ref).abs().max())
    scale = float(ref.abs().max().clamp_min(1e-6))
    tol = (2e-2 if w.dtype == torch.float16 else 1e-4) * scale
    w_t = initializer(model)
    return OnnxCheck(
        shape=[int(w.shape[0]), int(w.shape[1])],
        dtype=str(w.dtype).removeprefix("torch."),
        tokens=tokens,
        checker=checker,
        onnxruntime_max_abs_err=err,
        tolerance=tol,
        passed=checker == "ok" and err <= tol and is_2of4_along_k(w_t),
        sparse_fraction=float((w_t == 0).mean()),
    )
