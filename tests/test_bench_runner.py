"""Runner: metric sanity on the hf backend, compare alternation, partial results on failure."""

import pytest
import torch
from bench_fakes import FakeBackend

from sparse_trt.bench.backends.base import BackendSpec
from sparse_trt.bench.errors import BackendError, WorkloadError
from sparse_trt.bench.loadgen import LoadSpec
from sparse_trt.bench.runner import compare_benchmark, open_backend, run_benchmark
from sparse_trt.bench.workload import Workload, grid


def check_point_sane(p):
    w = p.workload
    assert p.sequences == w.batch_size * p.requests
    assert p.output_tokens == p.sequences * w.output_len
    assert p.input_tokens == p.sequences * w.input_len
    for s in (p.ttft_s, p.itl_s, p.e2e_s, p.output_tokens_per_s_per_user):
        assert s.n > 0 and s.min > 0 and s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert p.ttft_s.max <= p.e2e_s.max and p.ttft_s.p50 <= p.e2e_s.p50
    # throughputs are totals over the measured window(s)
    assert p.window_s == pytest.approx(sum(p.window_list_s))
    assert p.output_token_throughput == pytest.approx(p.output_tokens / p.window_s)
    assert p.total_token_throughput == pytest.approx((p.input_tokens + p.output_tokens) / p.window_s)
    assert p.request_throughput == pytest.approx(p.sequences / p.window_s)
    # e2e = ttft + (n-1) * itl per sequence, so also on average
    assert p.e2e_s.mean == pytest.approx(p.ttft_s.mean + (w.output_len - 1) * p.itl_s.mean, rel=1e-6)
    c = p.conditions
    assert c.start.unix_time <= c.end.unix_time and c.cpu_count >= 1


def test_hf_backend_metrics_on_tiny_llama(tiny_dirs):
    d = tiny_dirs("llama")
    pts = grid([1, 2], [8], [4], [1, 2])
    b = open_backend("hf", BackendSpec(str(d), torch.device("cpu")), pts)
    try:
        seen = []
        r = run_benchmark(b, pts, LoadSpec(warmup=1, per_worker=2), label="tiny", on_update=seen.append)
    finally:
        b.close()
    assert r.status == "complete" and len(r.points) == 4
    assert [x.status for x in seen] == ["partial"] * 3 + ["complete"]
    for p in r.points:
        check_point_sane(p)
        assert p.requests == 2 * p.workload.concurrency and p.memory.scope == "process"
        assert p.memory.weights_bytes and p.memory.weights_bytes > 0
        assert p.memory.host_peak_rss_bytes and p.memory.host_peak_rss_bytes > 0
        assert p.memory.torch_peak_allocated_bytes is None  # CPU: no device allocator
    assert r.sparse_kernels.active is False and r.dtype == "float32" and r.token_counts.startswith("model")


def test_fake_backend_metrics_known_times():
    b = FakeBackend("x", ttft=0.01, step=0.005)
    r = run_benchmark(b, [Workload(1, 4, 5, 1)], LoadSpec(requests=3, warmup=0), label="x")
    p = r.points[0]
    check_point_sane(p)
    # sleeps never end early; a loaded machine may make them late
    assert 0.01 <= p.ttft_s.p50 < 0.1 and 0.005 <= p.itl_s.p50 < 0.05


def test_compare_alternates_and_pairs():
    calls: list[str] = []
    d = FakeBackend("dense", calls, ttft=0.03)
    s = FakeBackend("sparse", calls, ttft=0.002)  # 15x shorter TTFT: clear of a loaded machine's jitter
    rd, rs, cmp = compare_benchmark(d, s, [Workload(1, 4, 3, 1)], LoadSpec(requests=1, warmup=1), pairs=4)
    assert calls == ["dense", "sparse",  # warm-up
                     "dense", "sparse", "sparse", "dense", "dense", "sparse", "sparse", "dense"]
    cp = cmp.points[0]
    assert cp.order == ["dense", "sparse", "dense", "sparse"]
    assert cp.pairs == 4 and cp.output_throughput_ratio.ratios.n == 4 and cp.ttft_speedup.ratios.n == 4
    assert cp.ttft_speedup.estimate > 1 and cp.ttft_speedup.ci_low > 1  # the sparse fake has a shorter TTFT
    assert rd.points[0].load.windows == rs.points[0].load.windows == 4 and len(rd.points[0].window_list_s) == 4
    assert cmp.kind == "noise"  # the fake's sparse side reports no sparse kernels


def test_failure_keeps_finished_points():
    b = FakeBackend("x", fail_after=3)  # 3 calls succeed: point 1 (1 warm-up + 2 measured) done
    written = []
    with pytest.raises(BackendError, match="boom"):
        run_benchmark(b, grid([1, 2], [4], [2], [1]), LoadSpec(requests=2, warmup=1), label="x", on_update=written.append)
    assert written[-1].status == "partial" and len(written[-1].points) == 1 and "boom" in written[-1].error
    calls: list[str] = []
    d, s = FakeBackend("dense", calls), FakeBackend("sparse", calls, fail_after=0)
    out = []
    with pytest.raises(BackendError):
        compare_benchmark(d, s, [Workload(1, 4, 2, 1)], LoadSpec(requests=1, warmup=0), pairs=1,
                          on_update=lambda *a: out.append(a))
    assert out[-1][0].status == "failed" and out[-1][0].points == []


def test_concurrency_serialises_non_thread_safe_backend():
    class Serial(FakeBackend):
        thread_safe = False

    b = Serial("x", ttft=0.05, step=0.0)
    r = run_benchmark(b, [Workload(1, 4, 1, 3)], LoadSpec(requests=3, warmup=0), label="x")
    p = r.points[0]
    # three queued requests: the last waited for the other two, and that wait counts as latency
    assert p.e2e_s.max >= 2 * p.e2e_s.min
    assert p.sequences == 3


def test_workload_beyond_model_context(tiny_dirs):
    with pytest.raises(WorkloadError, match="max_position_embeddings"):
        open_backend("hf", BackendSpec(str(tiny_dirs("llama")), torch.device("cpu")), [Workload(1, 200, 100)])
