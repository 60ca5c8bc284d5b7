"""Runner: metric sanity on the hf backend, compare alternation, partial results on failure."""

import pytest
import torch
from bench_fakes import FakeBackend

from sparse_trt.bench.backends.base import BackendSpec
from sparse_trt.bench.errors import BackendError, WorkloadError
from sparse_trt.bench.runner import compare_benchmark, open_backend, run_benchmark
from sparse_trt.bench.workload import Workload, grid


def check_point_sane(p):
    w = p.workload
    assert p.sequences == w.sequences * p.iterations
    assert p.output_tokens == p.sequences * w.output_len
    assert p.input_tokens == p.sequences * w.input_len
    for s in (p.ttft_s, p.tpot_s, p.e2e_s, p.output_tokens_per_s, p.total_tokens_per_s, p.requests_per_s):
        assert s.n > 0 and s.min > 0 and s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert p.ttft_s.max <= p.e2e_s.max and p.ttft_s.p50 <= p.e2e_s.p50
    # tokens/s consistent with counts and times
    assert p.output_tokens / p.measured_seconds == pytest.approx(
        sum(w.sequences * w.output_len / t for t in p.iteration_wall_s) / len(p.iteration_wall_s), rel=0.5)
    walls = p.iteration_wall_s
    tps = [w.sequences * w.output_len / t for t in walls]
    assert p.output_tokens_per_s.mean == pytest.approx(sum(tps) / len(tps))
    assert p.total_tokens_per_s.mean == pytest.approx(sum(w.sequences * (w.input_len + w.output_len) / t for t in walls) / len(walls))
    assert p.requests_per_s.mean == pytest.approx(sum(w.sequences / t for t in walls) / len(walls))
    # e2e ~ ttft + (n-1) * tpot per sequence
    assert p.e2e_s.mean == pytest.approx(p.ttft_s.mean + (w.output_len - 1) * p.tpot_s.mean, rel=1e-6)
    assert p.itl_s.n == p.sequences * (w.output_len - 1)


def test_hf_backend_metrics_on_tiny_llama(tiny_dirs):
    d = tiny_dirs("llama")
    pts = grid([1, 2], [8], [4], [1, 2])
    b = open_backend("hf", BackendSpec(str(d), torch.device("cpu")), pts)
    try:
        seen = []
        r = run_benchmark(b, pts, warmup=1, iters=2, label="tiny", on_update=seen.append)
    finally:
        b.close()
    assert r.status == "complete" and len(r.points) == 4
    assert [x.status for x in seen] == ["partial"] * 3 + ["complete"]
    for p in r.points:
        check_point_sane(p)
        assert p.memory.weights_bytes and p.memory.weights_bytes > 0
        assert p.memory.host_peak_rss_bytes and p.memory.host_peak_rss_bytes > 0
        assert p.memory.torch_peak_allocated_bytes is None  # CPU: no device allocator
    assert r.sparse_kernels.active is False and r.dtype == "float32"


def test_fake_backend_metrics_known_times():
    b = FakeBackend("x", ttft=0.01, step=0.005)
    r = run_benchmark(b, [Workload(1, 4, 5, 1)], warmup=0, iters=3, label="x")
    p = r.points[0]
    check_point_sane(p)
    assert p.ttft_s.p50 == pytest.approx(0.01, abs=0.008)
    assert p.tpot_s.p50 == pytest.approx(0.005, abs=0.004)


def test_compare_alternates_and_pairs():
    calls: list[str] = []
    d = FakeBackend("dense", calls)
    s = FakeBackend("sparse", calls, ttft=0.001)
    rd, rs, cmp = compare_benchmark(d, s, [Workload(1, 4, 3, 1)], warmup=2, iters=4)
    assert calls == ["dense", "sparse", "sparse", "dense",  # warm-up
                     "dense", "sparse", "sparse", "dense", "dense", "sparse", "sparse", "dense"]
    cp = cmp.points[0]
    assert cp.order == ["dense", "sparse", "dense", "sparse"]
    assert cp.pairs == 4 and cp.output_tokens_per_s_ratio.n == 4 and cp.ttft_speedup.n == 4
    assert cp.ttft_speedup.p50 > 1  # the sparse fake has a shorter TTFT
    assert rd.points[0].iterations == rs.points[0].iterations == 4


def test_failure_keeps_finished_points():
    b = FakeBackend("x", fail_after=3)  # 3 calls succeed: point 1 (1 warm-up + 2 iters) done
    written = []
    with pytest.raises(BackendError, match="boom"):
        run_benchmark(b, grid([1, 2], [4], [2], [1]), warmup=1, iters=2, label="x", on_update=written.append)
    assert written[-1].status == "partial" and len(written[-1].points) == 1 and "boom" in written[-1].error
    calls: list[str] = []
    d, s = FakeBackend("dense", calls), FakeBackend("sparse", calls, fail_after=0)
    out = []
    with pytest.raises(BackendError):
        compare_benchmark(d, s, [Workload(1, 4, 2, 1)], warmup=0, iters=1, on_update=lambda *a: out.append(a))
    assert out[-1][0].status == "failed" and out[-1][0].points == []


def test_concurrency_serialises_non_thread_safe_backend():
    class Serial(FakeBackend):
        thread_safe = False

    b = Serial("x", ttft=0.05, step=0.0)
    r = run_benchmark(b, [Workload(1, 4, 1, 3)], warmup=0, iters=1, label="x")
    p = r.points[0]
    # three queued requests: the last waited for the other two, and that wait counts as latency
    assert p.e2e_s.max >= 2 * p.e2e_s.min
    assert p.sequences == 3


def test_workload_beyond_model_context(tiny_dirs):
    with pytest.raises(WorkloadError, match="max_position_embeddings"):
        open_backend("hf", BackendSpec(str(tiny_dirs("llama")), torch.device("cpu")), [Workload(1, 200, 100)])
