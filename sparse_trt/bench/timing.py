"""Statistics (percentiles, spread, paired ratios) and device-aware clocks.

Percentiles use linear interpolation between closest ranks (numpy's default ``linear`` method).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside 0..100")
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


@dataclass(frozen=True)
class Summary:
    """Distribution of one metric over samples: count, mean, sample std, min, p50/p90/p99, max."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not xs:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        n = len(xs)
        mean = sum(xs) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, std, min(xs), percentile(xs, 50), percentile(xs, 90), percentile(xs, 99), max(xs))

    @property
    def empty(self) -> bool:
        return self.n == 0


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """Summary of per-pair ratios a_i / b_i (pairs measured back to back share machine noise)."""
    if len(numerators) != len(denominators):
        raise ValueError("paired_ratios needs equally long sequences")
    return Summary.of([a / b for a, b in zip(numerators, denominators, strict=True) if b and b > 0 and a is not None])


class Clock:
    """Wall clock that first waits for queued device work, so GPU times are real (not launch times)."""

    def __init__(self, device: torch.device | None) -> None:
        self.device = device
        self._sync: Callable[[], None]
        if device is not None and device.type == "cuda":
            self._sync = lambda: torch.cuda.synchronize(device)
        else:
            self._sync = lambda: None

    def sync(self) -> None:
        self._sync()

    def now(self) -> float:
        self._sync()
        return time.perf_counter()


def time_callable_events(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` measured with CUDA events on ``device`` (after ``warmup`` calls).

    On a non-CUDA device it falls back to synchronised wall-clock timing.
    """
    for _ in range(max(0, warmup)):
        fn()
    out: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        with torch.cuda.device(device):
            for _ in range(iters):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1000.0)
        return out
    clock = Clock(device)
    for _ in range(iters):
        t0 = clock.now()
        fn()
        out.append(clock.now() - t0)
    return out
