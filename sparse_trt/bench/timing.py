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
    return Summary.of(_ratios(numerators, denominators))


def _ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    if len(numerators) != len(denominators):
        raise ValueError("paired ratios need equally long sequences")
    out = []
    for a, b in zip(numerators, denominators, strict=True):
        if a is None or b is None:
            continue
        a, b = float(a), float(b)
        if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0:
            out.append(a / b)
    return out


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *, confidence: float = 0.95,
                    resamples: int = 2000, seed: int = 0) -> tuple[Summary, float, float, float]:
    """Per-pair ratios a_i / b_i: (their summary, geometric mean, CI low, CI high).

    The interval is a percentile bootstrap of the geometric mean, resampling whole pairs (a pair shares
    its machine state, so pairs are the independent unit). Fewer than 2 usable pairs: NaN bounds.
    """
    import numpy as np

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} outside (0, 1)")
    rs = _ratios(numerators, denominators)
    summary = Summary.of(rs)
    if not rs:
        return summary, math.nan, math.nan, math.nan
    logs = np.log(np.asarray(rs, dtype=np.float64))
    estimate = float(np.exp(logs.mean()))
    if len(rs) < 2:
        return summary, estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rs), size=(resamples, len(rs)))
    means = logs[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return summary, estimate, float(np.exp(lo)), float(np.exp(hi))


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
