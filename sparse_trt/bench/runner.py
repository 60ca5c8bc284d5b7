"""Drive backends over workload points: warm-up, timed iterations, memory windows, paired compare.

``run_benchmark`` measures one backend; ``compare_benchmark`` measures dense and sparse in the same
process, alternating which runs first in each iteration pair (ABBA...), so drifts in clocks,
temperature or background load hit both sides alike; it reports per-pair ratios with their spread.
Both call ``on_update`` after every finished point, and on failure, so callers can write what has
been measured so far.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sparse_trt.core.errors import SparseTrtError

from .backends.base import Backend, BackendSpec, GenerationRequest, SequenceTiming, create_backend
from .errors import BackendError
from .memory import MemoryProbe, merge_memory
from .results import ComparePoint, Comparison, MemoryStats, PointResult, RunResult
from .timing import Summary, paired_ratios
from .workload import Workload, check_limits, make_prompts

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class IterationSample:
    sequences: list[SequenceTiming]
    wall_s: float
    memory: MemoryStats | None

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.sequences)

    @property
    def input_tokens(self) -> int:
        return sum(s.input_tokens for s in self.sequences)

    def mean(self, fn: Callable[[SequenceTiming], float | None]) -> float:
        vals = [v for v in (fn(s) for s in self.sequences) if v is not None]
        return sum(vals) / len(vals) if vals else float("nan")


def _ttft(s: SequenceTiming) -> float:
    return s.first_token - s.start


def _e2e(s: SequenceTiming) -> float:
    return s.end - s.start


def _tpot(s: SequenceTiming) -> float | None:
    return (s.end - s.first_token) / (s.output_tokens - 1) if s.output_tokens > 1 else None


class BackendRunner:
    """One backend plus what it needs to be measured: a lock if it is not thread safe, a memory probe."""

    def __init__(self, backend: Backend, seed: int = 0) -> None:
        self.backend = backend
        self.seed = seed
        self.lock = None if backend.thread_safe else threading.Lock()
        self.probe = MemoryProbe(backend.memory_device())
        self._vocab = backend.vocab_size()
        self._weights = backend.weights_bytes()

    def prompts(self, w: Workload, iteration: int) -> list[list[list[int]]]:
        """Prompts for each of the ``concurrency`` requests of one iteration (same for dense and sparse)."""
        return [make_prompts(self._vocab, w.batch_size, w.input_len, self.seed + 7919 * iteration + 131 * r)
                for r in range(w.concurrency)]

    def _one(self, req: GenerationRequest) -> list[SequenceTiming]:
        submitted = time.perf_counter()  # queueing behind the lock counts as latency
        if self.lock is None:
            seqs = self.backend.generate(req)
        else:
            with self.lock:
                seqs = self.backend.generate(req)
        if len(seqs) != len(req.prompts):
            raise BackendError(f"backend '{self.backend.name}' returned {len(seqs)} timings for {len(req.prompts)} prompts")
        out = []
        for s in seqs:
            if not (s.start <= s.first_token <= s.end):
                raise BackendError(f"backend '{self.backend.name}' returned inconsistent times {s}")
            out.append(dataclasses.replace(s, start=min(submitted, s.start)))
        return out

    def iteration(self, w: Workload, iteration: int, pool: ThreadPoolExecutor | None, measure_memory: bool) -> IterationSample:
        reqs = [GenerationRequest(p, w.output_len) for p in self.prompts(w, iteration)]
        if measure_memory:
            self.probe.start()
        try:
            if pool is None or len(reqs) == 1:
                results = [self._one(r) for r in reqs]
            else:
                results = list(pool.map(self._one, reqs))
        finally:
            mem = self.probe.stop(self._weights) if measure_memory else None
        seqs = [s for r in results for s in r]
        wall = max(s.end for s in seqs) - min(s.start for s in seqs)
        return IterationSample(seqs, wall, mem)


def summarise(w: Workload, warmup: int, samples: list[IterationSample]) -> PointResult:
    seqs = [s for it in samples for s in it.sequences]
    itl = [b - a for s in seqs for a, b in zip(s.token_times, s.token_times[1:], strict=False)]
    walls = [it.wall_s for it in samples]
    return PointResult(
        workload=w,
        warmup=warmup,
        iterations=len(samples),
        sequences=len(seqs),
        input_tokens=sum(it.input_tokens for it in samples),
        output_tokens=sum(it.output_tokens for it in samples),
        measured_seconds=sum(walls),
        ttft_s=Summary.of([_ttft(s) for s in seqs]),
        tpot_s=Summary.of([v for v in (_tpot(s) for s in seqs) if v is not None]),
        itl_s=Summary.of(itl),
        e2e_s=Summary.of([_e2e(s) for s in seqs]),
        output_tokens_per_s=Summary.of([it.output_tokens / it.wall_s for it in samples if it.wall_s > 0]),
        total_tokens_per_s=Summary.of([(it.input_tokens + it.output_tokens) / it.wall_s for it in samples if it.wall_s > 0]),
        requests_per_s=Summary.of([len(it.sequences) / it.wall_s for it in samples if it.wall_s > 0]),
        memory=merge_memory([it.memory for it in samples if it.memory is not None]),
        iteration_wall_s=walls,
    )


def open_backend(name: str, spec: BackendSpec, points: list[Workload]) -> Backend:
    """Create a backend, refuse workloads beyond its limits (before loading anything heavy), load it."""
    backend = create_backend(name, spec)
    try:
        check_limits(points, backend.limits(), name)
        backend.load()
    except BaseException:
        backend.close()
        raise
    return backend


def _run_result(backend: Backend, label: str, points: list[PointResult], status: str, error: str | None) -> RunResult:
    pattern, quality = backend.quality()
    return RunResult(
        label=label,
        backend=backend.name,
        model=backend.spec.model,
        device=str(backend.memory_device()),
        dtype=backend.dtype_name(),
        sparse_kernels=backend.sparse_kernels(),
        points=list(points),
        status=status,
        error=error,
        pattern=pattern,
        quality=quality,
        build_report=backend.build_report(),
        backend_info=backend.info(),
    )


def _error_text(e: BaseException) -> str:
    return e.message if isinstance(e, SparseTrtError) else f"{type(e).__name__}: {e}"


def _raise_kept(e: BaseException) -> None:
    if isinstance(e, (SparseTrtError, KeyboardInterrupt)):
        raise e
    raise BackendError(f"benchmark failed: {type(e).__name__}: {e}",
                       fix="the points finished before the failure were written; see the results file") from e


def _pool(w: Workload) -> ThreadPoolExecutor | None:
    return ThreadPoolExecutor(max_workers=w.concurrency, thread_name_prefix="sparse-trt-req") if w.concurrency > 1 else None


def run_benchmark(
    backend: Backend,
    points: list[Workload],
    *,
    warmup: int,
    iters: int,
    label: str,
    seed: int = 0,
    on_update: Callable[[RunResult], None] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    if iters < 1:
        raise ValueError("iters must be >= 1")
    runner = BackendRunner(backend, seed)
    done: list[PointResult] = []
    total = len(points) * (warmup + iters)
    step = 0
    try:
        for w in points:
            pool = _pool(w)
            try:
                for i in range(warmup):
                    runner.iteration(w, -1 - i, pool, measure_memory=False)
                    step += 1
                    if progress:
                        progress(f"{label} {w.key} warm-up", step, total)
                samples = []
                for i in range(iters):
                    samples.append(runner.iteration(w, i, pool, measure_memory=True))
                    step += 1
                    if progress:
                        progress(f"{label} {w.key}", step, total)
            finally:
                if pool is not None:
                    pool.shutdown()
            done.append(summarise(w, warmup, samples))
            if on_update:
                on_update(_run_result(backend, label, done, "partial" if len(done) < len(points) else "complete", None))
    except BaseException as e:
        if on_update:
            on_update(_run_result(backend, label, done, "partial" if done else "failed", _error_text(e)))
        _raise_kept(e)
    return _run_result(backend, label, done, "complete", None)


def compare_point(w: Workload, dense: list[IterationSample], sparse: list[IterationSample], order: list[str]) -> ComparePoint:
    def per_iter(samples: list[IterationSample], fn) -> list[float]:
        return [it.mean(fn) for it in samples]

    d_tps = [it.output_tokens / it.wall_s for it in dense]
    s_tps = [it.output_tokens / it.wall_s for it in sparse]
    return ComparePoint(
        workload=w,
        pairs=len(dense),
        e2e_speedup=paired_ratios(per_iter(dense, _e2e), per_iter(sparse, _e2e)),
        ttft_speedup=paired_ratios(per_iter(dense, _ttft), per_iter(sparse, _ttft)),
        tpot_speedup=paired_ratios(per_iter(dense, _tpot), per_iter(sparse, _tpot)),
        output_tokens_per_s_ratio=paired_ratios(s_tps, d_tps),
        order=list(order),
    )


def compare_benchmark(
    dense: Backend,
    sparse: Backend,
    points: list[Workload],
    *,
    warmup: int,
    iters: int,
    labels: tuple[str, str] = ("dense", "sparse"),
    seed: int = 0,
    on_update: Callable[[RunResult, RunResult, Comparison], None] | None = None,
    progress: Progress | None = None,
) -> tuple[RunResult, RunResult, Comparison]:
    """Alternate dense and sparse on identical prompts; iteration i runs dense first when i is even."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    runners = {"dense": BackendRunner(dense, seed), "sparse": BackendRunner(sparse, seed)}
    res_d: list[PointResult] = []
    res_s: list[PointResult] = []
    cmp_points: list[ComparePoint] = []
    total = len(points) * (warmup + iters)
    step = 0

    def emit(status: str, error: str | None) -> tuple[RunResult, RunResult, Comparison]:
        rd = _run_result(dense, labels[0], res_d, status, error)
        rs = _run_result(sparse, labels[1], res_s, status, error)
        return rd, rs, Comparison(labels[0], labels[1], list(cmp_points))

    try:
        for w in points:
            pool = _pool(w)
            try:
                for i in range(warmup):
                    for side in ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense"):
                        runners[side].iteration(w, -1 - i, pool, measure_memory=False)
                    step += 1
                    if progress:
                        progress(f"{w.key} warm-up", step, total)
                samples: dict[str, list[IterationSample]] = {"dense": [], "sparse": []}
                order: list[str] = []
                for i in range(iters):
                    sides = ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense")
                    order.append(sides[0])
                    for side in sides:
                        samples[side].append(runners[side].iteration(w, i, pool, measure_memory=True))
                    step += 1
                    if progress:
                        progress(f"{w.key}", step, total)
            finally:
                if pool is not None:
                    pool.shutdown()
            res_d.append(summarise(w, warmup, samples["dense"]))
            res_s.append(summarise(w, warmup, samples["sparse"]))
            cmp_points.append(compare_point(w, samples["dense"], samples["sparse"], order))
            if on_update:
                on_update(*emit("partial" if len(res_d) < len(points) else "complete", None))
    except BaseException as e:
        if on_update:
            on_update(*emit("partial" if res_d else "failed", _error_text(e)))
        _raise_kept(e)
    return emit("complete", None)
