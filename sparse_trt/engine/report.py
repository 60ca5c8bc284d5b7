"""``build_report.json``: a typed, versioned record of what was built, how, and whether TensorRT picked
sparse kernels. This module is its only writer (:func:`write_report`) and only reader (:func:`read_report`);
other stages (``bench``) read it through :func:`read_report` / :func:`load_report`.

Unknown keys, missing keys and other schema versions are refused (:class:`BuildReportError`), so a
report from another tool or an older sparse_trt is never half-understood.

The sparse verdict: ``sparse`` only when more than ``threshold`` (0.5) of the checkpoint's linear
weight parameters sit in GEMMs for which TensorRT picked a sparse tactic. For a GEMM the FLOPs per
token are 2 x its weight parameters, so this is also the fraction of GEMM FLOPs on sparse tactics.
``partly sparse`` when some but not enough were picked, ``dense`` when none (or a dense build),
``unknown`` when the log cannot tell.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparse_trt.core.atomic import atomic_write_text
from sparse_trt.core.errors import ManifestError

REPORT_NAME = "build_report.json"
SCHEMA = "sparse_trt.build_report"
SCHEMA_VERSION = 2
SPARSE_THRESHOLD = 0.5
VERDICTS = ("sparse", "partly sparse", "dense", "unknown")


class BuildReportError(ManifestError):
    """A build_report.json is missing fields, has unknown ones, or another schema version (exit 3)."""


@dataclass(frozen=True)
class Settings:
    """What sparse_trt asked trtllm-build for."""

    weight_sparsity: bool
    gemm_plugin: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int | None  # None: trtllm-build's default
    opt_num_tokens: int | None  # None: trtllm-build's default (max_batch_size x max_beam_width, one profile)
    multiple_profiles: bool
    workers: int
    extra_args: tuple[str, ...]  # passed through to trtllm-build (--trtllm-arg)
    timing_cache: str | None  # file name inside the engine folder


@dataclass(frozen=True)
class EngineSettings:
    """What the engine's config.json (written by trtllm-build) says it was built with; None = not recorded."""

    max_batch_size: int | None
    max_input_len: int | None
    max_seq_len: int | None
    max_num_tokens: int | None
    opt_num_tokens: int | None
    multiple_profiles: bool | None
    use_fused_mlp: bool | None
    gemm_plugin: str | None
    weight_sparsity: bool | None
    world_size: int | None


@dataclass(frozen=True)
class Pattern2of4:
    weights: int
    along_input: int
    along_output: int


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    architecture: str | None
    dtype: str | None
    tp: int
    pp: int
    world_size: int
    pattern_2of4: Pattern2of4
    manifest_pattern: str | None
    quant_algo: str | None  # from the checkpoint config's `quantization` block (None: not quantized)
    kv_cache_quant_algo: str | None
    precision: str  # quant_algo when quantized, else dtype
    linear_weight_params: int  # all ranks together


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str | None
    driver: str | None


@dataclass(frozen=True)
class Versions:
    sparse_trt: str
    tensorrt_llm: str | None
    tensorrt: str | None
    torch: str | None
    gpu: Gpu | None


@dataclass(frozen=True)
class EngineSparsity:
    """The (Sparsity) lines of one engine (one per rank, in log order)."""

    eligible: tuple[str, ...]
    picked: tuple[str, ...]
    picked_seen: bool


@dataclass(frozen=True)
class Sparsity:
    sparsity_lines_found: bool
    eligible_count: int  # TensorRT layers
    picked_count: int
    eligible_layers: tuple[str, ...]
    picked_layers: tuple[str, ...]
    eligible_linears: tuple[str, ...]  # checkpoint linears (GEMMs) behind the eligible layers
    picked_linears: tuple[str, ...]
    unmapped_layers: tuple[str, ...]  # TensorRT layer names that map to no linear (kept, never dropped)
    foreign_nodes: tuple[str, ...]  # Myelin regions among them: their GEMMs are not individually named
    per_engine: tuple[EngineSparsity, ...]
    sparse_weight_fraction: float | None  # picked linear weight params / all linear weight params
    fraction_basis: str
    threshold: float
    verdict: str  # one of VERDICTS
    engine_generation_seconds: tuple[float, ...]
    total_build_seconds_logged: float | None
    errors: tuple[str, ...]

    @property
    def eligible_gemm_count(self) -> int:
        return len(self.eligible_linears)

    @property
    def picked_gemm_count(self) -> int:
        return len(self.picked_linears)


@dataclass(frozen=True)
class BuildReport:
    schema: str
    schema_version: int
    engine_dir: str
    mode: str  # "sparse" | "dense"
    source: str
    exported_from_hf: bool
    settings: Settings
    engine: EngineSettings
    command: tuple[str, ...]
    build_seconds: float
    engine_bytes: int
    engine_files: dict[str, int]
    checkpoint: CheckpointInfo
    versions: Versions
    sparsity: Sparsity
    log: str
    diagnosis: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples): what the file and the bench results hold."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: Any, where: str = REPORT_NAME) -> BuildReport:
        if not isinstance(d, dict):
            raise BuildReportError(f"{where} is not a JSON object", fix="rebuild the engine with `sparse-trt build`")
        if d.get("schema") != SCHEMA or d.get("schema_version") != SCHEMA_VERSION:
            raise BuildReportError(
                f"{where} is not a sparse_trt build report of schema version {SCHEMA_VERSION} "
                f"(schema={d.get('schema')!r}, schema_version={d.get('schema_version', d.get('report_version'))!r})",
                fix="rebuild the engine with this sparse_trt (`sparse-trt build ... --overwrite`)",
            )
        report = _load(cls, d, where)
        if report.mode not in ("sparse", "dense") or report.sparsity.verdict not in VERDICTS:
            raise BuildReportError(f"{where}: mode {report.mode!r} / verdict {report.sparsity.verdict!r} not understood",
                                   fix="rebuild the engine with `sparse-trt build`")
        return report


def _check_scalar(tp: Any, v: Any, where: str) -> Any:
    if tp is bool:
        ok = isinstance(v, bool)
    elif tp is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif tp is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        v = float(v) if ok else v
    elif tp is str:
        ok = isinstance(v, str)
    else:
        ok = True
    if not ok:
        raise BuildReportError(f"{where} should be {tp.__name__}, got {v!r}", fix="rebuild the engine with `sparse-trt build`")
    return v


def _convert(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, v, where)
    if dataclasses.is_dataclass(tp):
        return _load(tp, v, where)
    if origin is tuple:
        if not isinstance(v, list):
            raise BuildReportError(f"{where} should be a list", fix="rebuild the engine with `sparse-trt build`")
        inner = typing.get_args(tp)[0]
        return tuple(_convert(inner, x, f"{where}[{i}]") for i, x in enumerate(v))
    if origin is dict:
        if not isinstance(v, dict):
            raise BuildReportError(f"{where} should be an object", fix="rebuild the engine with `sparse-trt build`")
        _kt, vt = typing.get_args(tp)
        return {str(k): _convert(vt, x, f"{where}.{k}") for k, x in v.items()}
    return _check_scalar(tp, v, where)


def _load(cls: Any, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise BuildReportError(f"{where} should be an object", fix="rebuild the engine with `sparse-trt build`")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    missing = [n for n in names if n not in d]
    if unknown or missing:
        raise BuildReportError(
            f"{where}: " + "; ".join(x for x in (f"unknown keys {unknown}" if unknown else "",
                                                 f"missing keys {missing}" if missing else "") if x),
            fix="rebuild the engine with this sparse_trt (`sparse-trt build ... --overwrite`)",
        )
    return cls(**{n: _convert(hints[n], d[n], f"{where}.{n}") for n in names})


def sparse_verdict(mode: str, lines_found: bool, picked_count: int, fraction: float | None,
                   threshold: float = SPARSE_THRESHOLD) -> str:
    if mode == "dense":
        return "dense"
    if not lines_found:
        return "unknown"
    if picked_count == 0:
        return "dense"
    if fraction is None:
        return "unknown"
    return "sparse" if fraction > threshold else "partly sparse"


def _tactic_cause(engine: EngineSettings) -> str:
    head = "TensorRT found eligible layers but timed the sparse tactics slower than dense ones at the shapes it optimised for"
    if engine.multiple_profiles:
        return (f"{head}: every optimization profile (token counts up to 64, 128, 256, 512, 1024 and max_num_tokens = "
                f"{engine.max_num_tokens}); dense winning at all of them is common for small hidden sizes")
    opt = engine.opt_num_tokens
    shapes = f"opt_num_tokens = {opt} tokens per forward pass" if opt is not None else "opt_num_tokens"
    return (f"{head}: {shapes} (one optimization profile; by default opt_num_tokens = max_batch_size x max_beam_width, "
            "decode-sized GEMMs where dense tactics often win). TensorRT-LLM ignores --max-input-len for the profile. "
            "Build with --multiple-profiles (the default), or --no-multiple-profiles --opt-num-tokens N near your "
            "typical prefill token count")


def diagnose(report: BuildReport) -> list[str]:
    """Likely reasons why a sparse build is not 'sparse' (empty when it is, and for dense builds)."""
    sp = report.sparsity
    if report.mode != "sparse" or sp.verdict == "sparse":
        return []
    causes: list[str] = []
    if sp.verdict == "partly sparse":
        frac = f"{sp.sparse_weight_fraction:.0%}" if sp.sparse_weight_fraction is not None else "?"
        causes.append(f"only {frac} of the linear weights (= GEMM FLOPs) run on sparse tactics, not above the "
                      f"{sp.threshold:.0%} threshold: the run does not count as sparse")
    if not sp.sparsity_lines_found:
        causes.append(
            "TensorRT printed no '(Sparsity)' lines: the build ran without weight sparsity or below INFO log level "
            "(sparse_trt passes --weight_sparsity and --log_level info; check the command in build_report.json)"
        )
    if report.settings.gemm_plugin != "disable" or (report.engine.gemm_plugin not in (None, "disable")):
        causes.append("the GEMM plugin is on: its cuBLASLt GEMMs never use sparse kernels (build with --gemm_plugin disable)")
    ck = report.checkpoint
    if ck.dtype == "float32" and ck.quant_algo is None:
        causes.append("the checkpoint is float32: Sparse Tensor Cores run FP16/BF16/INT8/FP8; export with --dtype float16")
    pat = ck.pattern_2of4
    if pat.weights and pat.along_input == 0:
        if pat.along_output:
            causes.append("the 2:4 pattern runs along the output dimension; TensorRT needs it along the input (reduction) dimension")
        else:
            causes.append("no linear weight in the checkpoint is 2:4 sparse along its input dimension (was the model pruned with 2:4?)")
    gpu = report.versions.gpu
    if gpu is not None and gpu.compute_capability:
        try:
            cc = float(gpu.compute_capability)
        except ValueError:
            cc = None
        if cc is not None and cc < 8.0:
            causes.append(f"the GPU ({gpu.name}, sm {gpu.compute_capability}) has no Sparse Tensor Cores (Ampere sm80 or newer needed)")
    if sp.foreign_nodes:
        causes.append(f"{len(sp.foreign_nodes)} Myelin region(s) ({{ForeignNode[...]}}) hide their GEMMs from the per-layer "
                      "report; see sparsity.unmapped_layers")
    if sp.eligible_count > 0:
        causes.append(_tactic_cause(report.engine))
    elif sp.sparsity_lines_found:
        causes.append("no layer was eligible for sparse math: weights are not 2:4 along the reduction dimension as TensorRT sees them")
    return causes


def write_report(engine_dir: Path, report: BuildReport) -> Path:
    """The one writer: check the report round-trips through the reader, then write it atomically."""
    d = report.to_dict()
    BuildReport.from_dict(d, "the new build report")
    p = Path(engine_dir) / REPORT_NAME
    atomic_write_text(p, json.dumps(d, indent=2) + "\n")
    return p


def load_report(path: Path) -> BuildReport:
    """The one reader, from a file path."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildReportError(f"'{path}' is unreadable ({e})", fix="rebuild the engine with `sparse-trt build`") from None
    return BuildReport.from_dict(d, str(path))


def read_report(engine_dir: Path) -> BuildReport | None:
    """The report beside the engines of ``engine_dir``; None when there is none; BuildReportError when invalid."""
    p = Path(engine_dir) / REPORT_NAME
    return load_report(p) if p.is_file() else None
