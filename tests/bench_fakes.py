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
