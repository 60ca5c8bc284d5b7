"""Results JSON: typed, versioned dataclasses; unknown keys and other schema versions are rejected on load.

One file holds the environment it was measured in, the runs (one per backend/model), the paired
comparisons (``bench compare``) and/or GEMM probe rows (``bench gemm``). Reports are rendered from
these files only, never from live measurements.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_trt.core.atomic import atomic_write_text

from .errors import ResultsError
from .timing import Summary
from .workload import Workload

SCHEMA = "sparse_trt.bench.results"
SCHEMA_VERSION = 2  # 2: load-generator windows, AIPerf metric names, bootstrap CIs, run conditions


@dataclass(frozen=True)
class Environment:
    timestamp: str
    hostname: str
    platform: str
    python: str
    cpu: str
    cpu_count: int
    gpu_name: str | None
    gpu_count: int
    gpu_driver: str | None
    cuda: str | None
    nvml: str  # "ok" or why NVML readings are unavailable
    versions: dict[str, str | None]  # torch, transformers, tensorrt_llm, tensorrt, sparse_trt, ...
    git_commit: str | None
    command_line: list[str]


@dataclass(frozen=True)
class SparseKernels:
    """Did the sparse side actually run sparse kernels? ``active`` None = unknown (not verified)."""

    active: bool | None
    kind: str  # e.g. "none: dense kernels on zero weights", "torch semi-structured (CUTLASS)"
    eligible_layers: int | None = None
    sparse_layers: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class MemoryStats:
    """Memory during one workload point (max over its measured windows). None = not measurable here.

    ``scope`` says whose memory it is: ``process`` (this process, which runs the model: hf, torch-2of4,
    trtllm) or ``client`` (this process only sends requests to a server; measured only when asked).
    """

    weights_bytes: int | None
    torch_peak_allocated_bytes: int | None
    torch_peak_over_baseline_bytes: int | None  # peak minus what was allocated when the point started
    nvml_device_used_peak_bytes: int | None  # device-wide (every process on the GPU)
    nvml_process_used_peak_bytes: int | None  # this process only
    host_peak_rss_bytes: int | None
    notes: list[str] = field(default_factory=list)
    scope: str = "process"


@dataclass(frozen=True)
class ServerMemory:
    """Memory of the server a client backend talks to (``triton``), peak over the measured windows."""

    source: str  # e.g. "server /metrics nv_gpu_memory_used_bytes", "local server process RSS (pid 123)"
    peak_bytes: int | None
    label: str = "server"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HostSnapshot:
    """Machine state at one instant: load average and, where NVML works, GPU clocks and temperature."""

    unix_time: float
    loadavg: list[float]  # 1, 5, 15 minutes; empty where unknown
    gpu: dict[str, float] = field(default_factory=dict)  # sm_clock_mhz, mem_clock_mhz, temperature_c


@dataclass(frozen=True)
class Conditions:
    """How busy the machine was while a point was measured (start and end, CPU use and steal in between)."""

    start: HostSnapshot
    end: HostSnapshot
    cpu_count: int
    cpu_busy_pct: float | None  # all CPUs, whole machine, from /proc/stat
    cpu_steal_pct: float | None  # time the hypervisor gave our virtual CPUs to someone else
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadSettings:
    """How the load generator drove a point (see sparse_trt/bench/loadgen.py)."""

    mode: str  # "closed-loop" | "poisson"
    concurrency: int  # workers (closed loop) / most requests in flight (poisson)
    request_rate: float | None  # requests per second (poisson)
    warmup_requests: int
    requests: int | None  # measured requests per window, or None with duration_s
    duration_s: float | None
    windows: int = 1  # measured windows (compare: one per pair)


@dataclass(frozen=True)
class PointResult:
    """One workload point; metric definitions as NVIDIA's AIPerf defines them (docs/bench.md).

    Per-sequence distributions: TTFT, ITL = (e2e - TTFT) / (output tokens - 1), inter-chunk latency (gaps
    between streamed chunks, all sequences), e2e latency, per-user output throughput = 1 / ITL.
    Throughputs: totals over the measured window (first request sent -> last response received), summed
    over windows when there are several.
    """

    workload: Workload
    load: LoadSettings
    requests: int  # measured generate calls
    sequences: int  # measured sequences (requests x batch size)
    input_tokens: int
    output_tokens: int
    window_s: float  # sum of measured windows
    ttft_s: Summary
    itl_s: Summary
    inter_chunk_s: Summary
    e2e_s: Summary
    output_tokens_per_s_per_user: Summary
    output_token_throughput: float  # output tokens / window
    total_token_throughput: float  # (input + output tokens) / window
    request_throughput: float  # sequences / window
    memory: MemoryStats | None
    conditions: Conditions
    server_memory: ServerMemory | None = None
    window_list_s: list[float] = field(default_factory=list)  # each measured window
    window_output_tokens: list[int] = field(default_factory=list)

    @property
    def window_throughputs(self) -> list[float]:
        return [t / w for t, w in zip(self.window_output_tokens, self.window_list_s, strict=False) if w > 0]


@dataclass(frozen=True)
class RunResult:
    label: str
    backend: str
    model: str
    device: str
    dtype: str | None
    sparse_kernels: SparseKernels
    points: list[PointResult]
    status: str = "complete"  # complete | partial | failed
    error: str | None = None
    pattern: str | None = None  # sparsity pattern from the model's manifest, if any
    quality: dict[str, Any] = field(default_factory=dict)  # manifest "quality" (perplexity ...)
    build_report: dict[str, Any] | None = None  # engine build_report.json, copied as is
    backend_info: dict[str, Any] = field(default_factory=dict)
    token_counts: str = ""  # where output token counts come from (engine, server, model, tokenizer)


@dataclass(frozen=True)
class PairedRatio:
    """Ratios over pairs of windows measured back to back, with a bootstrap confidence interval.

    ``estimate`` is the geometric mean of the per-pair ratios; ``ci_low``..``ci_high`` its percentile
    bootstrap interval (resampling pairs) at ``confidence``. NaN bounds: fewer than 2 pairs.
    """

    ratios: Summary
    estimate: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @property
    def empty(self) -> bool:
        return self.ratios.empty

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    @property
    def contains_one(self) -> bool:
        """True when the interval holds 1.0, or there is no interval: no measurable difference."""
        return not self.has_interval or self.ci_low <= 1.0 <= self.ci_high


@dataclass(frozen=True)
class ComparePoint:
    """Paired dense/sparse measurements of one workload point.

    Speedups are dense_time / sparse_time (>1 = sparse faster); the throughput ratio is
    sparse / dense (>1 = sparse more tokens/s). One pair = one dense window and one sparse window
    measured back to back (order alternating).
    """

    workload: Workload
    pairs: int
    output_throughput_ratio: PairedRatio
    e2e_speedup: PairedRatio
    ttft_speedup: PairedRatio
    itl_speedup: PairedRatio
    order: list[str] = field(default_factory=list)  # which side ran first in each measured pair


@dataclass(frozen=True)
class Comparison:
    dense_label: str
    sparse_label: str
    points: list[ComparePoint]
    #: "sparse": the sparse side ran sparse kernels; "noise": it ran none (every ratio is noise by
    #: construction); "unverified": nobody knows
    kind: str = "unverified"
    #: set when the two sides' precisions differ and were compared on request (--allow-mixed-precision):
    #: what differed, e.g. "dense 'dense' is float16 (...) but sparse 'sparse' is FP8 (...)"
    mixed_precision: str | None = None


@dataclass(frozen=True)
class GemmRow:
    shape: list[int]  # [out_features, in_features] as nn.Linear stores the weight
    tokens: int
    dtype: str
    engine: str  # "torch" | "tensorrt"
    status: str  # "ok" or "not available: <why>"
    dense_s: Summary | None = None
    sparse_s: Summary | None = None
    speedup: float | None = None  # dense p50 / sparse p50
    max_abs_err: float | None = None
    sparse_kind: str | None = None


@dataclass(frozen=True)
class OnnxCheck:
    shape: list[int]
    dtype: str
    tokens: int
    checker: str  # "ok" or the checker's message
    onnxruntime_max_abs_err: float | None
    tolerance: float
    passed: bool
    sparse_fraction: float  # zeros in the graph's weight initializer


@dataclass(frozen=True)
class GemmResult:
    device: str
    source: str  # model path or "--shapes"
    rows: list[GemmRow]
    onnx_checks: list[OnnxCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ResultsFile:
    kind: str  # run | compare | gemm
    environment: Environment
    runs: list[RunResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    gemm: GemmResult | None = None
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _clean(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: Any, source: str = "results") -> ResultsFile:
        if not isinstance(d, dict):
            raise ResultsError(f"{source}: expected a JSON object, got {type(d).__name__}",
                               fix="pass a file written by `sparse-trt bench run|compare|gemm`")
        if d.get("schema") != SCHEMA:
            raise ResultsError(
                f"{source} is not a sparse_trt benchmark results file (schema {d.get('schema')!r})",
                fix="pass a file written by `sparse-trt bench run|compare|gemm`",
            )
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ResultsError(
                f"{source}: results schema_version {d.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})",
                fix="re-run the benchmark with this version of sparse_trt",
            )
        return _build(cls, d, source)

    @classmethod
    def load(cls, path: Path) -> ResultsFile:
        p = Path(path)
        if not p.is_file():
            raise ResultsError(f"results file '{p}' does not exist", fix="check the path")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ResultsError(f"results file '{p}' is unreadable ({e})") from None
        if not text.strip():
            raise ResultsError(f"results file '{p}' is empty", fix="re-run the benchmark; an empty file holds no results")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ResultsError(f"results file '{p}' is not JSON ({e})",
                               fix="pass a file written by `sparse-trt bench run|compare|gemm`") from None
        return cls.from_dict(d, source=str(p))


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _build(tp: Any, value: Any, where: str) -> Any:
    """Build ``tp`` from JSON ``value``, rejecting unknown keys and wrong types."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ResultsError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _build(a, value, where)
            except ResultsError as e:
                last = e
        raise last or ResultsError(f"{where}: unexpected null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ResultsError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ResultsError(f"{where}: unknown field(s) {unknown} in {tp.__name__}",
                               fix="the file was written by another version or tool; re-run the benchmark")
        kw = {}
        for name, f in fields.items():
            if name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ResultsError(f"{where}: missing field '{name}' in {tp.__name__}")
                continue
            kw[name] = _build(hints[name], value[name], f"{where}.{name}")
        return tp(**kw)
    if origin is list:
        if not isinstance(value, list):
            raise ResultsError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ResultsError(f"{where}: expected an object, got {type(value).__name__}")
        return {str(k): _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if value is None:  # NaN stored as null
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResultsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ResultsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ResultsError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ResultsError(f"{where}: expected a string, got {value!r}")
        return value
    raise ResultsError(f"{where}: cannot read type {tp!r}")
