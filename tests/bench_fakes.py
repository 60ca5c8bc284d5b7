"""Fake benchmark backends with scripted timings, shared by the bench tests."""

from __future__ import annotations

import itertools
import time

import torch

from sparse_trt.bench.backends.base import Backend, BackendSpec, GenerationRequest, SequenceTiming
from sparse_trt.bench.results import SparseKernels
from sparse_trt.bench.workload import Limits


class FakeBackend(Backend):
    """Each generate() sleeps ttft then step per extra token; logs calls into a shared list."""

    name = "fake"
    thread_safe = True

    def __init__(self, label: str, calls: list | None = None, ttft: float = 0.002, step: float = 0.001,
                 fail_after: int | None = None, active: bool | None = False, limits: Limits | None = None) -> None:
        super().__init__(BackendSpec(label, torch.device("cpu")))
        self.label = label
        self.calls = calls if calls is not None else []
        self.ttft, self.step = ttft, step
        self.fail_after = fail_after
        self.active = active
        self._limits = limits or Limits()
        self.n = itertools.count()

    def limits(self) -> Limits:
        return self._limits

    def load(self) -> None:
        pass

    def vocab_size(self) -> int:
        return 100

    def generate(self, request: GenerationRequest) -> list[SequenceTiming]:
        i = next(self.n)
        if self.fail_after is not None and i >= self.fail_after:
            raise RuntimeError("boom")
        self.calls.append(self.label)
        start = time.perf_counter()
        time.sleep(self.ttft)
        times = [time.perf_counter()]
        for _ in range(request.max_new_tokens - 1):
            time.sleep(self.step)
            times.append(time.perf_counter())
        return [SequenceTiming(start, times[0], times[-1], len(p), request.max_new_tokens, list(times))
                for p in request.prompts]

    def sparse_kernels(self) -> SparseKernels:
        return SparseKernels(self.active, "fake")

    def weights_bytes(self) -> int | None:
        return 1234


class ScriptedBackend(FakeBackend):
    """A fake whose latencies are scripted per request: ``script(index) -> (ttft_s, step_s)``.

    Requests come from :func:`indexed_requests`, which puts the request index in the prompt, so the
    backend knows which request it serves. ``chunk`` tokens arrive together per streamed chunk.
    Every call is logged as (index, start, first_token, end) in ``log``.
    """

    def __init__(self, label: str, script, chunk: int = 1, **kw) -> None:
        super().__init__(label, **kw)
        self.script, self.chunk = script, chunk
        self.log: list[tuple[int, float, float, float]] = []

    def generate(self, request: GenerationRequest) -> list[SequenceTiming]:
        index = request.prompts[0][0] - 1_000_000
        ttft, step = self.script(index)
        start = time.perf_counter()
        time.sleep(ttft)
        times = [time.perf_counter()] * min(self.chunk, request.max_new_tokens)
        while len(times) < request.max_new_tokens:
            time.sleep(step)
            t = time.perf_counter()
            times += [t] * min(self.chunk, request.max_new_tokens - len(times))
        self.log.append((index, start, times[0], times[-1]))
        return [SequenceTiming(start, times[0], times[-1], len(p), len(times), list(times)) for p in request.prompts]


def indexed_requests(w, index: int) -> GenerationRequest:
    """Request factory for ScriptedBackend: the index rides in the prompt's first token id."""
    return GenerationRequest([[1_000_000 + index] + [5] * (w.input_len - 1) for _ in range(w.batch_size)], w.output_len)
