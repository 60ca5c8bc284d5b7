"""One load generator for every backend: closed loop or Poisson arrivals, warm-up, a measured window.

Closed loop (the default, AIPerf's ``--concurrency``): N workers, each sending its next request the
moment its previous one ends, so exactly N requests are in flight until the last ones drain (no
waves: a slow request holds only its own worker). Poisson (``request_rate``, AIPerf's
``--request-rate``): requests arrive at exponentially distributed gaps (seeded), and at most N are
in flight; a request that finds every worker busy waits, and its latency counts from when it is sent.

A run is a warm-up phase (``warmup`` requests, discarded) then a measured phase that ends after
``requests`` requests, or once ``duration_s`` has passed (no request is started after that; the ones
in flight finish and count). The measured window is first request sent -> last response received, as
AIPerf's benchmark duration. Workers are threads of one pool kept for both phases (and for every
window of a point), so per-thread connections are opened during warm-up, not inside the window.

The generator knows nothing of models: ``send(index)`` performs request ``index`` and returns one
:class:`~sparse_trt.bench.backends.base.SequenceTiming` per sequence.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sparse_trt.core.errors import InputError

from .backends.base import SequenceTiming
from .results import LoadSettings

#: default measured requests per worker when neither a request count nor a duration is given
DEFAULT_REQUESTS_PER_WORKER = 10


@dataclass(frozen=True)
class LoadSpec:
    """How to drive one window.

    ``requests`` and ``duration_s`` are exclusive; neither: ``per_worker`` requests per worker.
    ``warmup`` None: one warm-up request per worker.
    """

    concurrency: int = 1
    requests: int | None = None
    duration_s: float | None = None
    warmup: int | None = None
    request_rate: float | None = None
    seed: int = 0
    per_worker: int = DEFAULT_REQUESTS_PER_WORKER

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InputError(f"concurrency {self.concurrency} must be at least 1", fix="e.g. --concurrency 1,4")
        if self.requests is not None and self.duration_s is not None:
            raise InputError("give a request count or a duration, not both", fix="drop --requests or --duration")
        if self.requests is not None and self.requests < 1:
            raise InputError(f"--requests {self.requests} must be at least 1", fix="e.g. --requests 32")
        if self.duration_s is not None and not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise InputError(f"--duration {self.duration_s} must be a positive number of seconds", fix="e.g. --duration 30")
        if self.warmup is not None and self.warmup < 0:
            raise InputError(f"--warmup {self.warmup} must be 0 or more", fix="e.g. --warmup 4")
        if self.request_rate is not None and not (self.request_rate > 0 and math.isfinite(self.request_rate)):
            raise InputError(f"--request-rate {self.request_rate} must be a positive number of requests per second",
                             fix="e.g. --request-rate 2.5, or leave it out for a closed loop")

    @property
    def measured_requests(self) -> int | None:
        if self.duration_s is not None:
            return None
        return self.requests if self.requests is not None else self.per_worker * self.concurrency

    @property
    def warmup_requests(self) -> int:
        return self.concurrency if self.warmup is None else self.warmup

    @property
    def mode(self) -> str:
        return "closed-loop" if self.request_rate is None else "poisson"

    def settings(self, windows: int = 1) -> LoadSettings:
        return LoadSettings(self.mode, self.concurrency, self.request_rate, self.warmup_requests, self.measured_requests,
                            self.duration_s, windows)


@dataclass
class RequestRecord:
    index: int
    worker: int
    sent: float  # perf_counter() when the generator handed the request to the backend
    sequences: list[SequenceTiming]

    @property
    def start(self) -> float:
        return min([self.sent] + [s.start for s in self.sequences])

    @property
    def end(self) -> float:
        return max(s.end for s in self.sequences)


@dataclass
class Window:
    """The measured requests of one phase, in completion order."""

    records: list[RequestRecord] = field(default_factory=list)

    @property
    def start(self) -> float:
        return min(r.start for r in self.records)

    @property
    def end(self) -> float:
        return max(r.end for r in self.records)

    @property
    def seconds(self) -> float:
        return self.end - self.start if self.records else 0.0

    @property
    def sequences(self) -> list[SequenceTiming]:
        return [s for r in self.records for s in r.sequences]

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.sequences)


Send = Callable[[int], list[SequenceTiming]]


class LoadGenerator:
    """Drives ``send`` with ``spec``; reuse one generator (its worker threads) for several windows."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="sparse-trt-load")
        self._worker_ids: dict[int, int] = {}
        self._ids_lock = threading.Lock()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _worker_id(self) -> int:
        with self._ids_lock:
            return self._worker_ids.setdefault(threading.get_ident(), len(self._worker_ids))

    # -- phases ---------------------------------------------------------------------------------------
    def warmup(self, send: Send, first_index: int = -1, on_done: Callable[[], None] | None = None) -> None:
        """``spec.warmup_requests`` requests with indices first_index, first_index - 1, ... (discarded)."""
        if self.spec.warmup_requests:
            self._phase(send, self.spec.warmup_requests, None, lambda k: first_index - k, on_done)

    def measure(self, send: Send, first_index: int = 0, on_done: Callable[[], None] | None = None) -> Window:
        """The measured phase: requests first_index, first_index + 1, ..."""
        return self._phase(send, self.spec.measured_requests, self.spec.duration_s, lambda k: first_index + k, on_done)

    def _phase(self, send: Send, count: int | None, duration: float | None, index_of: Callable[[int], int],
               on_done: Callable[[], None] | None) -> Window:
        state = _PhaseState(count, None)
        window = Window()
        if duration is not None:
            state.deadline = time.perf_counter() + duration

        def one(k: int) -> None:
            sent = time.perf_counter()
            seqs = send(index_of(k))
            rec = RequestRecord(index_of(k), self._worker_id(), sent, seqs)
            with state.lock:
                window.records.append(rec)
            if on_done is not None:
                on_done()

        try:
            if self.spec.request_rate is None:
                self._closed_loop(one, state)
            else:
                self._poisson(one, state)
        except BaseException:  # Ctrl-C: no new requests; the ones in flight finish
            state.stop.set()
            raise
        if state.error is not None:
            raise state.error
        return window

    def _closed_loop(self, one: Callable[[int], None], state: _PhaseState) -> None:
        def worker() -> None:
            while True:
                k = state.take()
                if k is None:
                    return
                try:
                    one(k)
                except BaseException as e:  # noqa: BLE001 - re-raised by the caller
                    state.fail(e)
                    return

        futures = [self._pool.submit(worker) for _ in range(self.spec.concurrency)]
        _wait(futures)

    def _poisson(self, one: Callable[[int], None], state: _PhaseState) -> None:
        rng = random.Random(self.spec.seed)
        rate = float(self.spec.request_rate or 1.0)
        slots = threading.BoundedSemaphore(self.spec.concurrency)
        futures: list[Future] = []

        def run(k: int) -> None:
            try:
                one(k)
            except BaseException as e:  # noqa: BLE001
                state.fail(e)
            finally:
                slots.release()

        t_next = time.perf_counter()
        while True:
            t_next += rng.expovariate(rate)
            delay = t_next - time.perf_counter()
            if delay > 0:
                if state.stop.wait(delay):
                    break
            k = state.take()
            if k is None:
                break
            while not slots.acquire(timeout=0.05):  # every worker busy: the arrival waits for a slot
                if state.stop.is_set():
                    break
            if state.stop.is_set():
                break
            futures.append(self._pool.submit(run, k))
        _wait(futures)


@dataclass
class _PhaseState:
    count: int | None
    deadline: float | None
    taken: int = 0
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def take(self) -> int | None:
        """The next request number, or None once the phase is over (count reached, deadline passed, failure)."""
        with self.lock:
            if self.stop.is_set():
                return None
            if self.count is not None and self.taken >= self.count:
                return None
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                return None
            k = self.taken
            self.taken += 1
            return k

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = e
        self.stop.set()


def _wait(futures: list[Future]) -> None:
    for f in futures:
        f.result()
