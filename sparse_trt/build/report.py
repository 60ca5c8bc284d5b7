"""``build_report.json``: what was built, how, and whether TensorRT actually picked sparse kernels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_NAME = "build_report.json"
REPORT_VERSION = 1


def diagnose(report: dict[str, Any]) -> list[str]:
    """Likely reasons why a sparse build got no sparse kernel (empty when it did, or for dense builds)."""
    if report.get("mode") != "sparse":
        return []
    sp = report.get("sparsity", {})
    if sp.get("picked_count", 0) > 0:
        return []
    causes: list[str] = []
    if not sp.get("sparsity_lines_found"):
        causes.append(
            "TensorRT printed no '(Sparsity)' lines: the build ran without weight sparsity or below INFO log level "
            "(sparse_trt passes --weight_sparsity and --log_level info; check the command in build_report.json)"
        )
    if report.get("settings", {}).get("gemm_plugin", "disable") != "disable":
        causes.append("the GEMM plugin is on: its cuBLASLt GEMMs never use sparse kernels (build with --gemm_plugin disable)")
    ck = report.get("checkpoint", {})
    if ck.get("dtype") == "float32":
        causes.append("the checkpoint is float32: Sparse Tensor Cores run FP16/BF16/INT8/FP8; export with --dtype float16")
    pat = ck.get("pattern_2of4", {})
    if pat.get("weights", 0) and pat.get("along_input", 0) == 0:
        if pat.get("along_output", 0):
            causes.append("the 2:4 pattern runs along the output dimension; TensorRT needs it along the input (reduction) dimension")
        else:
            causes.append("no linear weight in the checkpoint is 2:4 sparse along its input dimension (was the model pruned with 2:4?)")
    gpu = report.get("versions", {}).get("gpu") or {}
    cc = gpu.get("compute_capability")
    if cc is not None and float(cc) < 8.0:
        causes.append(f"the GPU ({gpu.get('name')}, sm {cc}) has no Sparse Tensor Cores (Ampere sm80 or newer needed)")
    if sp.get("eligible_count", 0) > 0:
        causes.append(
            "TensorRT found eligible layers but timed the sparse tactics slower than dense ones for these shapes "
            "(common for small hidden sizes or small --max-batch-size / --max-input-len)"
        )
    else:
        causes.append("no layer was eligible for sparse math: weights are not 2:4 along the reduction dimension as TensorRT sees them")
    return causes


def write_report(engine_dir: Path, report: dict[str, Any]) -> Path:
    p = Path(engine_dir) / REPORT_NAME
    p.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return p


def read_report(engine_dir: Path) -> dict[str, Any]:
    return json.loads((Path(engine_dir) / REPORT_NAME).read_text(encoding="utf-8"))
