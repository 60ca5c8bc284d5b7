"""Reading a TensorRT-LLM engine folder without TensorRT-LLM: config.json limits, build_report.json.

``build_report.json`` is written by sparse_trt's build stage; it is read defensively (any JSON object;
counts may be integers or lists of layer names) because its exact fields may evolve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparse_trt.core.errors import InputError, ManifestError
from sparse_trt.core.manifest import MANIFEST_NAME, Manifest

from ..results import SparseKernels
from ..workload import Limits

BUILD_REPORT = "build_report.json"
_SPARSE_KEYS = ("picked_count", "picked_linears", "picked_layers", "sparse_layers", "layers_with_sparse_kernels", "sparse_kernel_layers", "num_sparse_layers",
                "n_sparse_layers", "sparse")
_ELIGIBLE_KEYS = ("eligible_count", "eligible_linears", "eligible_layers", "num_eligible_layers", "n_eligible_layers", "eligible")


def check_engine_dir(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"engine folder '{path}' does not exist", fix="build one with `sparse-trt build` or check the path")
    if not p.is_dir():
        raise InputError(f"engine path '{path}' is a file; a TensorRT-LLM engine is a folder (config.json + rank*.engine)",
                         fix="pass the engine folder")
    if not (p / "config.json").is_file() or not any(p.glob("*.engine")):
        hint = " It looks like a Hugging Face model folder: use --backend hf or torch-2of4." if (
            p / "config.json").is_file() and not any(p.glob("*.engine")) else ""
        raise InputError(f"'{path}' is not a TensorRT-LLM engine folder (needs config.json and rank*.engine).{hint}",
                         fix="pass the output folder of `sparse-trt build` / trtllm-build")
    return p


def engine_config(p: Path) -> dict[str, Any]:
    try:
        d = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"engine config '{p / 'config.json'}' is unreadable ({e})", fix="rebuild the engine") from None
    if not isinstance(d, dict):
        raise InputError(f"engine config '{p / 'config.json'}' is not a JSON object", fix="rebuild the engine")
    return d


def _int(d: Any, key: str) -> int | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def engine_limits(cfg: dict[str, Any]) -> Limits:
    bc = cfg.get("build_config", {})
    pc = cfg.get("pretrained_config", {})
    max_seq = _int(bc, "max_seq_len") or _int(pc, "max_position_embeddings")
    return Limits(
        max_batch_size=_int(bc, "max_batch_size"),
        max_input_len=_int(bc, "max_input_len"),
        max_seq_len=max_seq,
        source="the engine's build_config (config.json)",
    )


def engine_vocab(cfg: dict[str, Any]) -> int | None:
    return _int(cfg.get("pretrained_config", {}), "vocab_size")


def read_build_report(p: Path) -> dict[str, Any] | None:
    f = p / BUILD_REPORT
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return {"_unreadable": f"{f}: {e}"}
    return d if isinstance(d, dict) else {"_unreadable": f"{f}: not a JSON object"}


def _count(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    return None


def _find(report: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for k in keys:
        if k in report:
            c = _count(report[k])
            if c is not None:
                return c
    for v in report.values():  # one level down, e.g. {"sparsity": {"sparse_layers": [...]}}
        if isinstance(v, dict):
            for k in keys:
                if k in v and _count(v[k]) is not None:
                    return _count(v[k])
    return None


def sparse_kernels_from_report(report: dict[str, Any] | None, where: str) -> SparseKernels:
    if report is None:
        return SparseKernels(None, "unknown: no build_report.json", detail=f"{where} has no {BUILD_REPORT}; "
                             "whether TensorRT chose sparse tactics is not verified")
    if "_unreadable" in report:
        return SparseKernels(None, "unknown: build_report.json unreadable", detail=str(report["_unreadable"]))
    sparse = _find(report, _SPARSE_KEYS)
    eligible = _find(report, _ELIGIBLE_KEYS)
    diagnosis = report.get("diagnosis")
    why = "; ".join(str(d) for d in diagnosis) if isinstance(diagnosis, list) and diagnosis else ""
    if report.get("mode") == "dense":
        return SparseKernels(False, "none: dense engine (built without weight sparsity)", eligible, 0,
                             detail="dense baseline engine")
    sp = report.get("sparsity")
    if isinstance(sp, dict) and sp.get("sparsity_lines_found") is False and not sparse:
        return SparseKernels(None, "unknown: the build log has no TensorRT (Sparsity) lines", eligible, sparse,
                             detail=why or "cannot tell whether sparse tactics were picked")
    if sparse is None:
        return SparseKernels(None, "unknown: build_report.json has no sparse layer count", eligible_layers=eligible,
                             detail=f"keys: {sorted(report)[:20]}")
    if sparse == 0:
        return SparseKernels(False, "none: TensorRT chose no sparse tactics for any layer", eligible, 0,
                             detail=why or "the engine runs dense kernels; any difference from dense is not from sparsity")
    return SparseKernels(True, "TensorRT sparse tactics (build_report.json)", eligible, sparse,
                         detail=f"{sparse} of {eligible if eligible is not None else '?'} eligible TensorRT layers picked sparse tactics")


def manifest_quality(*candidates: Path) -> tuple[str | None, dict[str, Any]]:
    for c in candidates:
        if c is not None and (Path(c) / MANIFEST_NAME).is_file():
            try:
                m = Manifest.load(Path(c))
            except ManifestError:
                continue
            return m.pattern, dict(m.quality)
    return None, {}


def report_source_dirs(report: dict[str, Any] | None) -> list[Path]:
    """Folders the build report names as its source (to find sparsity.json for quality)."""
    out: list[Path] = []
    if not report:
        return out
    for k in ("source", "source_dir", "checkpoint", "checkpoint_dir", "model_dir", "hf_dir", "pruned_dir", "manifest"):
        v = report.get(k)
        if isinstance(v, str) and v:
            p = Path(v)
            out.append(p.parent if p.name == MANIFEST_NAME else p)
    return out
