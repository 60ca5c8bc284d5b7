"""Benchmark sessions as the CLI and the demo run them: open backends, check, measure, write JSON.

Nothing here prints: callers get typed outcomes (and a progress callback) and render them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sparse_trt.core.errors import InputError

from .backends.base import Backend, BackendSpec, GenerationRequest, create_backend
from .environment import capture
from .loadgen import LoadSpec
from .results import Comparison, Environment, ResultsFile, RunResult
from .runner import Progress, RequestFactory, compare_benchmark, run_benchmark
from .workload import Workload, check_limits, grid


@dataclass(frozen=True)
class Side:
    """One model to measure: which backend, what to load, and its name in results."""

    backend: str
    spec: BackendSpec
    label: str


@dataclass
class CompareOutcome:
    path: Path
    dense: RunResult
    sparse: RunResult
    comparison: Comparison
    notes: list[str] = field(default_factory=list)


def _open(side: Side, points: list[Workload]) -> Backend:
    b = create_backend(side.backend, side.spec)
    try:
        check_limits(points, b.limits(), side.backend)
    except BaseException:
        b.close()
        raise
    return b


def _load(b: Backend) -> None:
    try:
        b.load()
    except BaseException:
        b.close()
        raise


def signature_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, tuple[Any, Any]] | None:
    """Keys whose values differ between two model signatures; None when either is unknown."""
    if a is None or b is None:
        return None
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_same_model(dense: Backend, sparse: Backend, labels: tuple[str, str], allow_different: bool) -> list[str]:
    """Refuse to compare two models of different architecture or shapes (unless allowed); notes otherwise."""
    diff = signature_differences(dense.model_signature(), sparse.model_signature())
    if diff is None:
        return [f"could not check that '{labels[0]}' and '{labels[1]}' share architecture and shapes "
                f"({dense.name} / {sparse.name} backend does not report them)"]
    if not diff:
        return []
    what = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
    if not allow_different:
        raise InputError(
            f"'{dense.spec.model}' and '{sparse.spec.model}' are different models ({what}): a dense-vs-sparse "
            "comparison needs the same architecture and shapes, the sparse one pruned from the dense one",
            fix="compare a model with its own pruned version, or pass --allow-different-models to compare anyway")
    return [f"different models compared on request (--allow-different-models): {what}"]


def text_requests(texts: list[str]) -> RequestFactory:
    """Requests carrying text prompts (backends that take text: ``triton`` with interface=text), cycled."""
    if not texts:
        raise InputError("no prompts to send", fix="give at least one prompt")

    def make(w: Workload, index: int) -> GenerationRequest:
        t = texts[abs(index) % len(texts)]
        return GenerationRequest([[] for _ in range(w.batch_size)], w.output_len, texts=[t] * w.batch_size)

    return make


def run_to_file(side: Side, points: list[Workload], load: LoadSpec, out_path: Path | None, env: Environment, *,
                seed: int = 0, client_memory: bool = False, requests: RequestFactory | None = None,
                progress: Progress | None = None) -> RunResult:
    """``bench run``: measure one side; results rewritten to ``out_path`` (if given) after every point."""
    b = _open(side, points)
    _load(b)
    try:
        def write(run: RunResult) -> None:
            if out_path is not None:
                ResultsFile("run", env, runs=[run]).save(out_path)

        return run_benchmark(b, points, load, label=side.label, seed=seed, client_memory=client_memory,
                             requests=requests, on_update=write, progress=progress)
    finally:
        b.close()


def compare_to_file(dense: Side, sparse: Side, points: list[Workload], load: LoadSpec, out_path: Path,
                    env: Environment, *, pairs: int, seed: int = 0, allow_different_models: bool = False,
                    client_memory: bool = False, progress: Progress | None = None,
                    allow_mixed_precision: bool = False) -> CompareOutcome:
    from .precision import check_same_precision, declared_precision

    if dense.label == sparse.label:
        raise InputError("the dense and sparse labels must differ", fix="pass --dense-label / --sparse-label")
    # precisions from the files, before any backend is created: a mixed pair is refused (bench/precision.py)
    dp, sp = (declared_precision(side.backend, side.spec.model, side.spec.dtype, side.spec.options)
              for side in (dense, sparse))
    mixed = check_same_precision(dp, sp, (dense.label, sparse.label), allow_mixed_precision)
    db = _open(dense, points)
    try:
        sb = _open(sparse, points)
        try:
            notes = check_same_model(db, sb, (dense.label, sparse.label), allow_different_models)
            if mixed is not None:
                notes.append(f"mixed precisions compared on request (--allow-mixed-precision): {mixed}")
            elif not (dp.known and sp.known):
                notes.append(f"could not check that both sides compute in the same precision ({dp.source if not dp.known else sp.source})")
            _load(db)
            _load(sb)

            def write(rd: RunResult, rs: RunResult, cmp: Comparison) -> None:
                ResultsFile("compare", env, runs=[rd, rs], comparisons=[replace(cmp, mixed_precision=mixed)]).save(out_path)

            rd, rs, cmp = compare_benchmark(db, sb, points, load, pairs=pairs, labels=(dense.label, sparse.label),
                                            seed=seed, client_memory=client_memory, on_update=write, progress=progress)
        finally:
            sb.close()
    finally:
        db.close()
    return CompareOutcome(out_path, rd, rs, replace(cmp, mixed_precision=mixed), notes)


# ---------------------------------------------------------------------------------------------- demo
#: the demo's benchmark: batch 1 and 4, 32 prompt tokens, 12 generated, 3 alternating pairs of one request
#: (16 generate calls in all, as many as the demo made before the load generator)
DEMO_POINTS = grid([1, 4], [32], [12], [1])
DEMO_LOAD = LoadSpec(concurrency=1, requests=1, warmup=1)
DEMO_PAIRS = 3


@dataclass
class DemoBench:
    results: Path
    report_dir: Path
    compare: CompareOutcome
    verdicts: list[Any]


def demo_compare(dense: str, pruned: Path, out_dir: Path, device: torch.device,
                 progress: Progress | None = None) -> DemoBench:
    """The demo's benchmark step: a small dense-vs-pruned compare on the hf backend, then a report.

    On the hf backend no sparse kernels run: the comparison is marked noise by construction, and the
    report says so (that is the point of showing it: zeros alone buy nothing).
    """
    from .report import build_report

    bench_dir = out_dir / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    res_path = bench_dir / "compare.json"
    env = capture(device, ["sparse-trt", "demo", "(bench step)"])
    outcome = compare_to_file(Side("hf", BackendSpec(dense, device), "dense"),
                              Side("hf", BackendSpec(str(pruned), device), "pruned"),
                              DEMO_POINTS, DEMO_LOAD, res_path, env, pairs=DEMO_PAIRS, progress=progress)
    rep = build_report([res_path], bench_dir / "report", gpu_hour_usd=2.5)
    return DemoBench(res_path, bench_dir / "report", outcome, rep.verdicts)


def demo_request_count() -> int:
    """Generate calls the demo's benchmark makes (for a progress bar's total)."""
    return 2 * len(DEMO_POINTS) * (DEMO_LOAD.warmup_requests + DEMO_PAIRS * (DEMO_LOAD.measured_requests or 0))
