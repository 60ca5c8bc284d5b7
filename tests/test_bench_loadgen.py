"""The load generator against fake backends with scripted latencies: closed-loop accounting (no waves),
Poisson arrivals, duration windows, AIPerf metric definitions, percentiles against numpy, bootstrap CIs."""

import math
import threading
import time

import numpy as np
import pytest
from bench_fakes import ScriptedBackend, indexed_requests

from sparse_trt.bench.backends.base import SequenceTiming
from sparse_trt.bench.loadgen import LoadGenerator, LoadSpec
from sparse_trt.bench.metrics import chunk_gaps
from sparse_trt.bench.runner import run_benchmark
from sparse_trt.bench.timing import bootstrap_ratio
from sparse_trt.bench.workload import Workload
from sparse_trt.core.errors import InputError


class Recorder:
    """send(index): sleeps latency(index), logs (index, start, end, in_flight_at_start)."""

    def __init__(self, latency) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.log: list[tuple[int, float, float]] = []

    def __call__(self, index: int) -> list[SequenceTiming]:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        t0 = time.perf_counter()
        time.sleep(self.latency(index))
        t1 = time.perf_counter()
        with self.lock:
            self.in_flight -= 1
            self.log.append((index, t0, t1))
        return [SequenceTiming(t0, t1, t1, 1, 1, [t1])]


def test_closed_loop_no_waves_exact_accounting():
    # request 0 is slow (0.4 s); the other 11 take 0.02 s. With waves of 3, every wave would wait for
    # its slowest request; in a closed loop the two other workers keep going while request 0 runs.
    rec = Recorder(lambda i: 0.4 if i == 0 else 0.02)
    with LoadGenerator(LoadSpec(concurrency=3, requests=12, warmup=3)) as gen:
        gen.warmup(rec)
        warm = sorted(i for i, _, _ in rec.log)
        rec.log.clear()
        win = gen.measure(rec)
    assert warm == [-3, -2, -1]  # warm-up: its own indices, discarded
    assert sorted(r.index for r in win.records) == list(range(12))  # every measured request exactly once
    assert rec.max_in_flight == 3
    slow = next(r for r in win.records if r.index == 0)
    during = [r for r in win.records if r.index != 0 and r.end <= slow.end]
    assert len(during) == 11  # all the fast ones finished while the slow one ran: no waves
    # each worker sends its next request the moment its previous one ends
    by_worker: dict[int, list] = {}
    for r in win.records:
        by_worker.setdefault(r.worker, []).append(r)
    assert len(by_worker) == 3
    for rs in by_worker.values():
        rs.sort(key=lambda r: r.sent)
        gaps = [b.sent - a.end for a, b in zip(rs, rs[1:], strict=False)]
        assert all(g >= -1e-6 for g in gaps) and (not gaps or float(np.median(gaps)) < 0.01), gaps
    assert win.seconds == pytest.approx(max(r.end for r in win.records) - min(r.start for r in win.records))
    assert win.seconds < 0.4 + 0.3  # the slow request bounds the window; the fast ones ran beside it
    # until the last request is sent, all 3 workers are busy: at (nearly) every request's midpoint 3 are in flight
    last_sent = max(r.sent for r in win.records)
    mids = [(r.sent + r.end) / 2 for r in win.records if (r.sent + r.end) / 2 < last_sent]
    busy = [sum(1 for o in win.records if o.sent <= m <= o.end) for m in mids]
    assert busy and sum(b == 3 for b in busy) >= 0.9 * len(busy), busy


def test_duration_window_and_validation():
    rec = Recorder(lambda i: 0.01)
    with LoadGenerator(LoadSpec(concurrency=2, duration_s=0.3, warmup=0)) as gen:
        t0 = time.perf_counter()
        win = gen.measure(rec)
    starts = [r.sent for r in win.records]
    # ~60 requests fit; the bounds are loose so that a loaded machine (threads descheduled) still passes
    assert len(win.records) >= 4 and {r.worker for r in win.records} == {0, 1}
    assert max(starts) <= t0 + 0.3 + 0.1  # nothing is started after the window closes (scheduling slack)
    for bad in (dict(concurrency=0), dict(requests=0), dict(duration_s=-1), dict(requests=3, duration_s=1.0),
                dict(warmup=-1), dict(request_rate=0.0), dict(request_rate=math.inf)):
        with pytest.raises(InputError):
            LoadSpec(**bad)


def test_poisson_arrivals_bounded_concurrency():
    rec = Recorder(lambda i: 0.005)
    rate = 50.0
    with LoadGenerator(LoadSpec(concurrency=4, requests=40, warmup=0, request_rate=rate, seed=3)) as gen:
        win = gen.measure(rec)
    sent = sorted(r.sent for r in win.records)
    gaps = np.diff(sent)
    assert len(win.records) == 40 and rec.max_in_flight <= 4
    assert 0.4 / rate < gaps.mean() < 2.5 / rate  # exponential gaps with mean 1/rate (loose: busy CI machines)
    assert gaps.std() > 0.3 * gaps.mean()  # not a fixed interval


def test_failure_stops_the_phase():
    def boom(i):
        if i == 3:
            raise RuntimeError("boom")
        return 0.005

    rec = Recorder(boom)
    with LoadGenerator(LoadSpec(concurrency=2, requests=50)) as gen, pytest.raises(RuntimeError, match="boom"):
        gen.measure(rec)
    assert len(rec.log) < 20


def test_metrics_follow_aiperf_definitions_and_numpy_percentiles():
    # scripted: TTFT grows with the request index, 2 tokens per streamed chunk
    b = ScriptedBackend("x", lambda i: (0.004 + 0.002 * (i % 5), 0.003), chunk=2)
    w = Workload(1, 4, 6, 2)
    r = run_benchmark(b, [w], LoadSpec(requests=10, warmup=2), label="x", requests=indexed_requests)
    p = r.points[0]
    assert (p.requests, p.sequences, p.output_tokens, p.input_tokens) == (10, 10, 60, 40)
    assert sorted(x[0] for x in b.log)[:2] == [-2, -1]  # warm-up requests ran, and are not counted
    measured = [x for x in b.log if x[0] >= 0]
    assert sorted(x[0] for x in measured) == list(range(10))
    # throughput = all output tokens / the window (first request sent -> last response)
    window = max(x[3] for x in measured) - min(x[1] for x in measured)
    assert p.window_s == pytest.approx(window, abs=1e-3)
    assert p.output_token_throughput == pytest.approx(p.output_tokens / p.window_s)
    assert p.total_token_throughput == pytest.approx((p.output_tokens + p.input_tokens) / p.window_s)
    assert p.request_throughput == pytest.approx(p.sequences / p.window_s)
    # per-sequence definitions
    assert p.ttft_s.n == p.itl_s.n == p.e2e_s.n == p.output_tokens_per_s_per_user.n == 10
    assert p.inter_chunk_s.n == 10 * 2  # 6 tokens in chunks of 2: 3 chunks, 2 gaps per sequence
    assert p.e2e_s.mean == pytest.approx(p.ttft_s.mean + 5 * p.itl_s.mean, rel=1e-9)  # ITL = (e2e - TTFT) / (n - 1)
    assert p.itl_s.mean == pytest.approx(p.inter_chunk_s.mean * 2 / 5, rel=1e-9)  # 2 chunk gaps span 5 token steps
    itl = [(x[3] - x[2]) / 5 for x in measured]
    assert p.output_tokens_per_s_per_user.mean == pytest.approx(float(np.mean([1 / v for v in itl])), rel=1e-9)


def test_summary_percentiles_match_numpy_on_recorded_values():
    b = ScriptedBackend("x", lambda i: (0.002 + 0.003 * ((i * 7) % 11), 0.001))
    r = run_benchmark(b, [Workload(1, 4, 3, 3)], LoadSpec(requests=22, warmup=0), label="x", requests=indexed_requests)
    p = r.points[0]
    ttft = [x[2] - x[1] for x in b.log]
    e2e = [x[3] - x[1] for x in b.log]
    assert p.ttft_s.n == len(ttft) == 22
    for q, got_t, got_e in ((50, p.ttft_s.p50, p.e2e_s.p50), (90, p.ttft_s.p90, p.e2e_s.p90), (99, p.ttft_s.p99, p.e2e_s.p99)):
        assert got_t == pytest.approx(float(np.percentile(ttft, q)), rel=1e-9)
        assert got_e == pytest.approx(float(np.percentile(e2e, q)), rel=1e-9)
    assert p.ttft_s.mean == pytest.approx(float(np.mean(ttft)), rel=1e-9)
    assert p.ttft_s.std == pytest.approx(float(np.std(ttft, ddof=1)), rel=1e-9)


def test_chunk_gaps():
    s = SequenceTiming(0.0, 1.0, 3.0, 1, 4, [1.0, 1.0, 2.0, 3.0])
    assert chunk_gaps(s) == [1.0, 1.0]


def test_bootstrap_ci_contains_the_true_ratio():
    rng = np.random.default_rng(0)
    true = 1.25
    hits = 0
    trials = 200
    for t in range(trials):
        base = rng.uniform(0.5, 2.0, size=12)  # machine state drifts between pairs; pairs share it
        dense = base * np.exp(rng.normal(0, 0.08, size=12))
        sparse = base / true * np.exp(rng.normal(0, 0.08, size=12))
        _, est, lo, hi = bootstrap_ratio(dense.tolist(), sparse.tolist(), seed=t)
        assert lo <= est <= hi
        hits += lo <= true <= hi
    assert hits / trials >= 0.88  # nominal 95%; the percentile bootstrap runs a little narrow at n=12
    s, est, lo, hi = bootstrap_ratio([2.0], [1.0])
    assert est == 2.0 and math.isnan(lo) and math.isnan(hi)  # one pair: no interval


def test_conditions_record_load_steal_and_gpu(monkeypatch):
    import types

    from sparse_trt.bench import conditions as C

    nv = types.SimpleNamespace(NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0, nvmlInit=lambda: None,
                               nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
                               nvmlDeviceGetClockInfo=lambda h, k: {1: 1755, 2: 2619}[k],
                               nvmlDeviceGetTemperature=lambda h, k: 61)
    monkeypatch.setattr(C, "available", lambda m: m == "pynvml")
    monkeypatch.setattr(C, "require", lambda m, purpose=None: nv)
    ticks = iter([[100, 0, 50, 800, 10, 0, 0, 5, 0, 0], [200, 0, 100, 1000, 20, 0, 0, 25, 0, 0]])
    monkeypatch.setattr(C, "_cpu_times", lambda: next(ticks))
    probe = C.ConditionsProbe(gpu_index=0)
    probe.start()
    c = probe.stop()
    assert c.start.gpu == {"sm_clock_mhz": 1755.0, "mem_clock_mhz": 2619.0, "temperature_c": 61.0}
    # deltas: user 100, system 50, idle 200, iowait 10, steal 20 -> total 380
    assert c.cpu_steal_pct == pytest.approx(100 * 20 / 380) and c.cpu_busy_pct == pytest.approx(100 * 170 / 380)
    assert len(c.start.loadavg) == 3
    text = C.describe(c)
    assert "SM clock 1755→1755 MHz" in text and "GPU 61→61 °C" in text and "steal 5.3%" in text
