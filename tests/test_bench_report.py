"""Report rendering: Markdown + PNGs, verdicts, loud no-sparse-kernel flags, cost, bad inputs."""

import dataclasses

import pytest
from bench_fakes import FakeBackend

from sparse_trt.bench.environment import capture
from sparse_trt.bench.errors import ResultsError
from sparse_trt.bench.report import build_report, cost_per_million
from sparse_trt.bench.results import ResultsFile, SparseKernels
from sparse_trt.bench.runner import compare_benchmark
from sparse_trt.bench.workload import grid


def compare_file(tmp_path, active, sparse_ttft=0.001, name="r.json", quality=None):
    import torch

    d = FakeBackend("dense", ttft=0.004, step=0.002)
    s = FakeBackend("sparse", ttft=sparse_ttft, step=0.0005, active=active)
    rd, rs, cmp = compare_benchmark(d, s, grid([1, 2], [4], [3], [1]), warmup=1, iters=3)
    rs = dataclasses.replace(rs, pattern="2:4", quality=quality or {},
                             sparse_kernels=SparseKernels(active, "fake kernels", 4, 4 if active else 0))
    return ResultsFile("compare", capture(torch.device("cpu")), [rd, rs], [cmp]).save(tmp_path / name)


def test_report_flags_no_sparse_kernels(tmp_path):
    p = compare_file(tmp_path, active=False)
    res = build_report([p], tmp_path / "rep", gpu_hour_usd=2.5)
    md = res.markdown.read_text()
    assert "NO SPARSE KERNELS RAN" in md.split("## Does")[0]  # banner at the top
    assert res.verdicts[0].answer.startswith("NO")
    assert "(not from sparsity)" in md
    names = {q.name for q in res.plots}
    assert {"tokens_per_s_vs_batch.png", "ttft_tpot_by_workload.png", "memory.png", "speedup.png"} <= names
    for q in res.plots:
        assert q.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_yes_when_faster_with_quality(tmp_path):
    q = {"perplexity": {"perplexity": 10.2}, "dense_perplexity": {"perplexity": 10.0}}
    p = compare_file(tmp_path, active=True, quality=q)
    res = build_report([p], tmp_path / "rep", gpu_hour_usd=2.0, plots=False)
    v = res.verdicts[0]
    assert v.kernels == "ran" and v.speed == "faster" and v.quality == "kept", v
    assert v.answer.startswith("YES") and v.best_cost_change < 0
    md = res.markdown.read_text()
    assert "NO SPARSE KERNELS" not in md and "10.2" in md and "$2 per device-hour" in md
    # quality degraded beyond the allowance -> NO
    res2 = build_report([p], tmp_path / "rep2", gpu_hour_usd=2.0, plots=False, max_ppl_increase=0.01)
    assert res2.verdicts[0].quality == "degraded" and res2.verdicts[0].answer.startswith("NO")


def test_report_unverified_kernels(tmp_path):
    p = compare_file(tmp_path, active=None)
    md = build_report([p], tmp_path / "rep", gpu_hour_usd=1, plots=False).markdown.read_text()
    assert "SPARSE KERNELS NOT VERIFIED" in md


def test_cost_per_million():
    assert cost_per_million(3.6, 1000.0) == pytest.approx(1.0)  # $0.001/s / 1000 tok/s * 1e6
    assert cost_per_million(2.5, 0.0) is None


def test_report_bad_inputs(tmp_path):
    with pytest.raises(ResultsError, match="no results files"):
        build_report([], tmp_path / "rep", gpu_hour_usd=2.5)
    (tmp_path / "e.json").write_text("")
    with pytest.raises(ResultsError, match="empty"):
        build_report([tmp_path / "e.json"], tmp_path / "rep", gpu_hour_usd=2.5)
    (tmp_path / "f.json").write_text('{"loss": 1.0}')
    with pytest.raises(ResultsError, match="not a sparse_trt"):
        build_report([tmp_path / "f.json"], tmp_path / "rep", gpu_hour_usd=2.5)
    import torch

    empty = ResultsFile("run", capture(torch.device("cpu"))).save(tmp_path / "nothing.json")
    with pytest.raises(ResultsError, match="hold no measured runs"):
        build_report([empty], tmp_path / "rep", gpu_hour_usd=2.5)
    p = compare_file(tmp_path, active=False)
    with pytest.raises(ResultsError, match="positive"):
        build_report([p], tmp_path / "rep", gpu_hour_usd=0)


def test_report_merges_files_with_same_labels(tmp_path):
    a = compare_file(tmp_path, active=False, name="a.json")
    b = compare_file(tmp_path, active=True, name="b.json")
    res = build_report([a, b], tmp_path / "rep", gpu_hour_usd=2.5, plots=False)
    assert len(res.verdicts) == 2 and res.verdicts[1].sparse_label == "sparse [2]"
