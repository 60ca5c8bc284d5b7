"""Reading a TensorRT-LLM engine folder without TensorRT-LLM: config.json limits, KV-cache geometry, mapping,
and ``build_report.json`` through the build stage's own typed reader (:mod:`sparse_trt.engine.report`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_trt.core.errors import ManifestError
from sparse_trt.core.manifest import MANIFEST_NAME, Manifest
from sparse_trt.engine.report import REPORT_NAME, BuildReport, BuildReportError, read_report

from ..precision import with_quantization
from ..results import SparseKernels
from ..workload import Limits

BUILD_REPORT = REPORT_NAME
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "int8": 1}


def _int(d: Any, key: str) -> int | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _dict(d: Any, key: str) -> dict[str, Any]:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def engine_limits(cfg: dict[str, Any]) -> Limits:
    bc = _dict(cfg, "build_config")
    pc = _dict(cfg, "pretrained_config")
    max_seq = _int(bc, "max_seq_len") or _int(pc, "max_position_embeddings")
    return Limits(
        max_batch_size=_int(bc, "max_batch_size"),
        max_input_len=_int(bc, "max_input_len"),
        max_seq_len=max_seq,
        source="the engine's build_config (config.json)",
    )


def engine_vocab(cfg: dict[str, Any]) -> int | None:
    return _int(_dict(cfg, "pretrained_config"), "vocab_size")


@dataclass(frozen=True)
class EngineMapping:
    world_size: int
    tp: int
    pp: int


def engine_mapping(cfg: dict[str, Any]) -> EngineMapping:
    """``pretrained_config.mapping`` of the engine (TensorRT-LLM's Mapping); 1 x 1 when absent."""
    m = _dict(_dict(cfg, "pretrained_config"), "mapping")
    tp, pp = _int(m, "tp_size") or 1, _int(m, "pp_size") or 1
    return EngineMapping(world_size=_int(m, "world_size") or tp * pp, tp=tp, pp=pp)


@dataclass(frozen=True)
class KvGeometry:
    """What one token of paged KV cache costs on one rank."""

    layers: int
    kv_heads: int  # per rank
    head_size: int
    dtype: str
    bytes_per_element: int
    tokens_per_block: int

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_size * self.bytes_per_element  # K and V

    def round_tokens(self, tokens: int) -> int:
        """Tokens rounded up to whole KV blocks (the cache is allocated in blocks)."""
        return math.ceil(tokens / self.tokens_per_block) * self.tokens_per_block

    def bytes_for(self, tokens: int) -> int:
        return self.round_tokens(tokens) * self.bytes_per_token


def kv_geometry(cfg: dict[str, Any]) -> KvGeometry | None:
    """KV-cache geometry from the engine config (None when the config lacks the sizes)."""
    pc = _dict(cfg, "pretrained_config")
    plugin = _dict(_dict(cfg, "build_config"), "plugin_config")
    layers, heads, hidden = _int(pc, "num_hidden_layers"), _int(pc, "num_attention_heads"), _int(pc, "hidden_size")
    if layers is None or heads is None:
        return None
    kv_heads = _int(pc, "num_key_value_heads") or heads
    head_size = _int(pc, "head_size") or (hidden // heads if hidden else None)
    if head_size is None:
        return None
    mapping = engine_mapping(cfg)
    quant = _dict(pc, "quantization")
    kvq = str(quant.get("kv_cache_quant_algo") or "").upper()
    dtype = "fp8" if kvq == "FP8" else "int8" if kvq == "INT8" else str(pc.get("dtype") or "float16")
    return KvGeometry(
        layers=math.ceil(layers / mapping.pp), kv_heads=math.ceil(kv_heads / mapping.tp), head_size=head_size,
        dtype=dtype, bytes_per_element=_DTYPE_BYTES.get(dtype, 2), tokens_per_block=_int(plugin, "tokens_per_block") or 32,
    )


def load_build_report(p: Path) -> BuildReport | BuildReportError | None:
    """The typed report beside the engines (None: none there; the error when it is invalid)."""
    try:
        return read_report(p)
    except BuildReportError as e:
        return e


def read_build_report(p: Path) -> dict[str, Any] | None:
    """The report as the JSON object the results file keeps (validated by the build stage's reader first);
    ``{"_unreadable": why}`` when invalid, None when there is none."""
    r = load_build_report(p)
    if isinstance(r, BuildReportError):
        return {"_unreadable": r.message}
    return None if r is None else r.to_dict()


def _typed(report: BuildReport | dict[str, Any] | None, where: str) -> BuildReport | BuildReportError | None:
    if report is None or isinstance(report, BuildReport):
        return report
    if "_unreadable" in report:
        return BuildReportError(str(report["_unreadable"]))
    try:
        return BuildReport.from_dict(report, f"{where}/{BUILD_REPORT}")
    except BuildReportError as e:
        return e


def sparse_kernels_from_report(report: BuildReport | dict[str, Any] | None, where: str) -> SparseKernels:
    """Did the engine run sparse kernels, according to its build report? Counts are GEMMs (linears)."""
    r = _typed(report, where)
    if r is None:
        return SparseKernels(None, "unknown: no build_report.json", detail=f"{where} has no {BUILD_REPORT}; "
                             "whether TensorRT chose sparse tactics is not verified")
    if isinstance(r, BuildReportError):
        return SparseKernels(None, "unknown: build_report.json invalid", detail=r.message)
    sp = r.sparsity
    eligible, picked = sp.eligible_gemm_count, sp.picked_gemm_count
    frac = "unknown" if sp.sparse_weight_fraction is None else f"{sp.sparse_weight_fraction:.1%}"
    why = "; ".join(r.diagnosis)
    counts = (f"{picked} of {eligible} eligible GEMMs ({sp.picked_count} of {sp.eligible_count} TensorRT layers) picked "
              f"sparse tactics; {frac} of the linear weights (= GEMM FLOPs) on sparse tactics; "
              f"{len(sp.unmapped_layers)} TensorRT layer names unmapped")
    if r.mode == "dense":
        return SparseKernels(False, "none: dense engine (built without weight sparsity)", eligible, 0,
                             detail="dense baseline engine")
    if sp.verdict == "unknown":
        return SparseKernels(None, "unknown: the build log does not tell which tactics TensorRT picked", eligible, picked,
                             detail=why or counts)
    if sp.verdict == "dense":
        return SparseKernels(False, "none: TensorRT chose no sparse tactics for any layer", eligible, 0,
                             detail=why or "the engine runs dense kernels; any difference from dense is not from sparsity")
    if sp.verdict == "partly sparse":
        return SparseKernels(False, f"partly: {frac} of GEMM weights on sparse tactics (not above the "
                             f"{sp.threshold:.0%} threshold)", eligible, picked, detail=counts + (f". {why}" if why else ""))
    return SparseKernels(True, f"TensorRT sparse tactics on {frac} of GEMM weights (build_report.json)", eligible, picked,
                         detail=counts)


def manifest_quality(*candidates: Path) -> tuple[str | None, dict[str, Any]]:
    for c in candidates:
        if c is not None and (Path(c) / MANIFEST_NAME).is_file():
            try:
                m = Manifest.load(Path(c))
            except ManifestError:
                continue
            quality = dict(m.quality)
            if m.recovery is not None:  # recovered by distillation: say so beside one-shot runs
                quality["recovery"] = {"tokens": m.recovery.tokens, "teacher": m.recovery.teacher}
            return m.pattern, with_quantization(Path(c), quality)  # quantized: its quality is the simulated figure
    return None, {}


def report_source_dirs(report: BuildReport | dict[str, Any] | None) -> list[Path]:
    """Folders the build report names as its source and checkpoint (to find sparsity.json for quality)."""
    r = _typed(report, "engine")
    if not isinstance(r, BuildReport):
        return []
    return [Path(r.source), Path(r.checkpoint.path)]
