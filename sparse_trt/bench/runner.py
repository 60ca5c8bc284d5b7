"""Drive backends with the load generator over workload points: one backend, or dense vs sparse paired.

``run_benchmark`` measures one backend: per point a warm-up, then one measured window (a request
count or a duration; closed loop or Poisson, see :mod:`sparse_trt.bench.loadgen`).
``compare_benchmark`` measures dense and sparse in the same process in *pairs* of windows on identical
prompts, alternating which side goes first (ABBA...), so drifts in clocks, temperature or background
load hit both alike; it reports per-pair ratios with a bootstrap confidence interval.
Both call ``on_update`` after every finished point, and on failure, so callers can write what has
been measured so far.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from sparse_trt.core.errors import SparseTrtError

from .backends.base import Backend, BackendSpec, GenerationRequest, SequenceTiming, create_backend
from .conditions import ConditionsProbe, merge_conditions
from .errors import BackendError, WorkloadError
from .loadgen import LoadGenerator, LoadSpec, Window
from .memory import MemoryProbe, merge_memory
from .metrics import e2e, itl, mean_of, summarise, ttft
from .results import ComparePoint, Comparison, MemoryStats, PairedRatio, PointResult, RunResult, ServerMemory
from .timing import bootstrap_ratio
from .workload import Workload, check_limits, make_prompts

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (description, done, total)
#: builds request ``index`` of a workload point; the same index gives the same prompts on both sides
RequestFactory = Callable[[Workload, int], GenerationRequest]

#: prompt seeds of window k are offset by k * WINDOW_STRIDE (warm-up uses negative indices)
WINDOW_STRIDE = 1_000_003


class BackendRunner:
    """One backend plus what it needs to be measured: a lock if it is not thread safe, memory probes."""

    def __init__(self, backend: Backend, seed: int = 0, *, client_memory: bool = False,
                 requests: RequestFactory | None = None) -> None:
        self.backend = backend
        self.seed = seed
        self.lock = None if backend.thread_safe else threading.Lock()
        self.measure_process = backend.memory_is_local or client_memory
        self.scope = "process" if backend.memory_is_local else "client"
        self.probe = MemoryProbe(backend.memory_device(), torch_allocator=backend.torch_allocator,
                                 configured=backend.configured_memory()) if self.measure_process else None
        self.server_probe = backend.server_memory_probe()
        gpu = backend.memory_device()
        self.conditions = ConditionsProbe(gpu.index or 0 if gpu.type == "cuda" else None)
        self._requests = requests
        self._vocab: int | None = None
        self._weights = backend.weights_bytes()

    def request(self, w: Workload, index: int) -> GenerationRequest:
        if self._requests is not None:
            return self._requests(w, index)
        if self._vocab is None:
            self._vocab = self.backend.vocab_size()
        return GenerationRequest(make_prompts(self._vocab, w.batch_size, w.input_len, self.seed + 7919 * index),
                                 w.output_len)

    def sender(self, w: Workload) -> Callable[[int], list[SequenceTiming]]:
        def send(index: int) -> list[SequenceTiming]:
            req = self.request(w, index)
            submitted = time.perf_counter()
            if self.lock is None:
                seqs = self.backend.generate(req)
            else:
                with self.lock:  # queueing behind a single-worker backend counts as latency
                    seqs = self.backend.generate(req)
            if len(seqs) != len(req.prompts):
                raise BackendError(f"backend '{self.backend.name}' returned {len(seqs)} timings for {len(req.prompts)} prompts")
            out = []
            for s in seqs:
                if not (s.start <= s.first_token <= s.end):
                    raise BackendError(f"backend '{self.backend.name}' returned inconsistent times {s}")
                out.append(s if self.lock is None else dataclasses.replace(s, start=min(submitted, s.start)))
            return out

        return send

    def window(self, w: Workload, gen: LoadGenerator, first_index: int, tick: Callable[[], None] | None
               ) -> tuple[Window, MemoryStats | None, ServerMemory | None]:
        if self.probe is not None:
            self.probe.start()
        if self.server_probe is not None:
            self.server_probe.start()
        mem = server = None
        try:
            win = gen.measure(self.sender(w), first_index, tick)
        finally:
            if self.probe is not None:
                mem = self.probe.stop(self._weights)
            if self.server_probe is not None:
                server = self.server_probe.stop()
        if not win.records:
            raise WorkloadError(f"workload {w.key}: the measured window finished no request",
                                fix="give a longer --duration or a --requests count")
        return win, mem, server


def _merge_memory(mems: list[MemoryStats | None], scope: str) -> MemoryStats | None:
    got = [m for m in mems if m is not None]
    if not got:
        return None
    return dataclasses.replace(merge_memory(got), scope=scope)


def _merge_server(items: list[ServerMemory | None]) -> ServerMemory | None:
    got = [s for s in items if s is not None]
    if not got:
        return None
    peaks = [s.peak_bytes for s in got if s.peak_bytes is not None]
    best = max(got, key=lambda s: s.peak_bytes or -1)
    notes: list[str] = []
    for s in got:
        notes += [n for n in s.notes if n not in notes]
    return ServerMemory(best.source, max(peaks) if peaks else None, best.label, notes)


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
        token_counts=backend.token_counts(),
    )


def _error_text(e: BaseException) -> str:
    return e.message if isinstance(e, SparseTrtError) else f"{type(e).__name__}: {e}"


def _raise_kept(e: BaseException) -> None:
    if isinstance(e, (SparseTrtError, KeyboardInterrupt)):
        raise e
    raise BackendError(f"benchmark failed: {type(e).__name__}: {e}",
                       fix="the points finished before the failure were written; see the results file") from e


def _spec_for(load: LoadSpec, w: Workload) -> LoadSpec:
    """The point's load: its concurrency replaces the template's."""
    return dataclasses.replace(load, concurrency=w.concurrency)


class _Ticker:
    """Thread-safe progress counter in requests."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total or None, 0  # None: unknown (--duration)
        self.desc = ""
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.done += 1
            if self.progress:
                self.progress(self.desc, self.done, self.total)


def _expected_requests(points: list[Workload], load: LoadSpec, windows: int, sides: int) -> int:
    if load.duration_s is not None:
        return 0
    n = 0
    for w in points:
        s = _spec_for(load, w)
        n += sides * (s.warmup_requests + windows * (s.measured_requests or 0))
    return n


def run_benchmark(
    backend: Backend,
    points: list[Workload],
    load: LoadSpec,
    *,
    label: str,
    seed: int = 0,
    client_memory: bool = False,
    requests: RequestFactory | None = None,
    on_update: Callable[[RunResult], None] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    runner = BackendRunner(backend, seed, client_memory=client_memory, requests=requests)
    done: list[PointResult] = []
    tick = _Ticker(progress, _expected_requests(points, load, 1, 1))
    try:
        for w in points:
            spec = _spec_for(load, w)
            with LoadGenerator(spec) as gen:
                tick.desc = f"{label} {w.key} warm-up"
                gen.warmup(runner.sender(w), -1, tick)
                tick.desc = f"{label} {w.key}"
                runner.conditions.start()
                win, mem, server = runner.window(w, gen, 0, tick)
                cond = runner.conditions.stop()
            done.append(summarise(w, spec.settings(1), [win], memory=_merge_memory([mem], runner.scope),
                                  conditions=cond, server_memory=server))
            if on_update:
                on_update(_run_result(backend, label, done, "partial" if len(done) < len(points) else "complete", None))
    except BaseException as e:
        if on_update:
            on_update(_run_result(backend, label, done, "partial" if done else "failed", _error_text(e)))
        _raise_kept(e)
    return _run_result(backend, label, done, "complete", None)


def paired(num: list[float], den: list[float], seed: int = 0) -> PairedRatio:
    summary, est, lo, hi = bootstrap_ratio(num, den, seed=seed)
    return PairedRatio(summary, est, lo, hi)


def compare_point(w: Workload, dense: list[Window], sparse: list[Window], order: list[str]) -> ComparePoint:
    def tput(wins: list[Window]) -> list[float]:
        return [x.output_tokens / x.seconds if x.seconds > 0 else float("nan") for x in wins]

    def mean(wins: list[Window], fn) -> list[float]:
        return [mean_of(x.sequences, fn) for x in wins]

    return ComparePoint(
        workload=w,
        pairs=len(dense),
        output_throughput_ratio=paired(tput(sparse), tput(dense)),
        e2e_speedup=paired(mean(dense, e2e), mean(sparse, e2e)),
        ttft_speedup=paired(mean(dense, ttft), mean(sparse, ttft)),
        itl_speedup=paired(mean(dense, itl), mean(sparse, itl)),
        order=list(order),
    )


def comparison_kind(sparse: Backend | RunResult) -> str:
    k = sparse.sparse_kernels() if isinstance(sparse, Backend) else sparse.sparse_kernels
    return {True: "sparse", False: "noise", None: "unverified"}[k.active]


def compare_benchmark(
    dense: Backend,
    sparse: Backend,
    points: list[Workload],
    load: LoadSpec,
    *,
    pairs: int,
    labels: tuple[str, str] = ("dense", "sparse"),
    seed: int = 0,
    client_memory: bool = False,
    requests: RequestFactory | None = None,
    on_update: Callable[[RunResult, RunResult, Comparison], None] | None = None,
    progress: Progress | None = None,
) -> tuple[RunResult, RunResult, Comparison]:
    """``pairs`` pairs of windows per point on identical prompts; pair i runs dense first when i is even."""
    if pairs < 1:
        raise ValueError("pairs must be >= 1")
    runners = {"dense": BackendRunner(dense, seed, client_memory=client_memory, requests=requests),
               "sparse": BackendRunner(sparse, seed, client_memory=client_memory, requests=requests)}
    res: dict[str, list[PointResult]] = {"dense": [], "sparse": []}
    cmp_points: list[ComparePoint] = []
    kind = comparison_kind(sparse)
    tick = _Ticker(progress, _expected_requests(points, load, pairs, 2))

    def emit(status: str, error: str | None) -> tuple[RunResult, RunResult, Comparison]:
        rd = _run_result(dense, labels[0], res["dense"], status, error)
        rs = _run_result(sparse, labels[1], res["sparse"], status, error)
        return rd, rs, Comparison(labels[0], labels[1], list(cmp_points), kind)

    try:
        for w in points:
            spec = _spec_for(load, w)
            wins: dict[str, list[Window]] = {"dense": [], "sparse": []}
            mems: dict[str, list] = {"dense": [], "sparse": []}
            servers: dict[str, list] = {"dense": [], "sparse": []}
            conds: dict[str, list] = {"dense": [], "sparse": []}
            order: list[str] = []
            with LoadGenerator(spec) as gen:
                tick.desc = f"{w.key} warm-up"
                for side in ("dense", "sparse"):
                    gen.warmup(runners[side].sender(w), -1, tick)
                for i in range(pairs):
                    sides = ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense")
                    order.append(sides[0])
                    tick.desc = f"{w.key} pair {i + 1}/{pairs}"
                    for side in sides:
                        r = runners[side]
                        r.conditions.start()
                        win, mem, server = r.window(w, gen, i * WINDOW_STRIDE, tick)
                        conds[side].append(r.conditions.stop())
                        wins[side].append(win)
                        mems[side].append(mem)
                        servers[side].append(server)
            for side in ("dense", "sparse"):
                res[side].append(summarise(w, spec.settings(pairs), wins[side],
                                           memory=_merge_memory(mems[side], runners[side].scope),
                                           conditions=merge_conditions(conds[side]),
                                           server_memory=_merge_server(servers[side])))
            cmp_points.append(compare_point(w, wins["dense"], wins["sparse"], order))
            if on_update:
                on_update(*emit("partial" if len(cmp_points) < len(points) else "complete", None))
    except BaseException as e:
        if on_update:
            on_update(*emit("partial" if cmp_points else "failed", _error_text(e)))
        _raise_kept(e)
    return emit("complete", None)
