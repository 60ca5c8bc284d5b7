"""Report rendering: Markdown + PNGs, verdicts, loud no-sparse-kernel flags, cost, bad inputs."""

import dataclasses

import pytest
from bench_fakes import FakeBackend

from sparse_trt.bench.environment import capture
from sparse_trt.bench.errors import ResultsError
from sparse_trt.bench.loadgen import LoadSpec
from sparse_trt.bench.report import build_report, cost_per_million, human_number, human_seconds, ratio_words
from sparse_trt.bench.results import PairedRatio, ResultsFile, SparseKernels
from sparse_trt.bench.runner import compare_benchmark
from sparse_trt.bench.timing import Summary
from sparse_trt.bench.workload import grid


def compare_file(tmp_path, active, sparse_ttft=0.004, name="r.json", quality=None):
    import torch

    d = FakeBackend("dense", ttft=0.02, step=0.01)
    s = FakeBackend("sparse", ttft=sparse_ttft, step=0.002, active=active)
    rd, rs, cmp = compare_benchmark(d, s, grid([1, 2], [4], [3], [1]), LoadSpec(requests=1, warmup=1), pairs=3)
    rs = dataclasses.replace(rs, pattern="2:4", quality=quality or {},
                             sparse_kernels=SparseKernels(active, "fake kernels", 4, 4 if active else 0))
    return ResultsFile("compare", capture(torch.device("cpu")), [rd, rs], [cmp]).save(tmp_path / name)


def test_report_flags_no_sparse_kernels(tmp_path):
    p = compare_file(tmp_path, active=False)
    res = build_report([p], tmp_path / "rep", gpu_hour_usd=2.5)
    md = res.markdown.read_text()
    assert "NO SPARSE KERNELS RAN" in md.split("## Does")[0]  # banner at the top
    v = res.verdicts[0]
    assert v.answer.startswith("NO") and v.speed.startswith("noise") and v.best_cost_change is None
    names = {q.name for q in res.plots}
    assert {"tokens_per_s_vs_batch.png", "ttft_itl_by_workload.png", "memory.png", "speedup.png"} <= names
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


def test_no_sparse_kernels_is_never_a_speedup(tmp_path):
    """The sparse fake is 2-4x faster, but ran no sparse kernels: every word says noise, none says gain."""
    from sparse_trt.cli.bench import compare_table

    p = compare_file(tmp_path, active=False)
    f = ResultsFile.load(p)
    cmp = f.comparisons[0]
    assert cmp.kind == "noise"
    assert all(pt.output_throughput_ratio.ci_low > 1 for pt in cmp.points)  # the fake really is faster
    res = build_report([p], tmp_path / "rep", gpu_hour_usd=2.5, plots=False)
    md = res.markdown.read_text()
    assert "NOISE BY CONSTRUCTION" in md
    for word in ("sparse ahead", "faster", "speedup:", "YES", "lower cost"):
        assert word not in md.replace("no speedup can come", "").replace("not a speedup", ""), word
    assert "not a saving" in md or "any difference is noise" in md  # the cheaper-looking cost carries its note
    from rich.console import Console

    con = Console(record=True, width=400)
    con.print(compare_table(cmp))
    text = con.export_text()
    assert "NOISE BY CONSTRUCTION" in text and "ahead" not in text
    assert "not sparsity" in text or "no measurable difference" in text


def test_ratio_words():
    s = Summary.of([1.0, 1.1, 0.9])
    assert ratio_words(PairedRatio(s, 1.02, 0.93, 1.11), "sparse").startswith("no measurable difference (95% CI 0.93–1.11)")
    assert ratio_words(PairedRatio(s, 1.5, 1.3, 1.7), "sparse").startswith("sparse ahead: ratio 1.50")
    assert "unverified" in ratio_words(PairedRatio(s, 1.5, 1.3, 1.7), "unverified")
    noise = ratio_words(PairedRatio(s, 1.85, 1.3, 2.3), "noise")
    assert "noise" in noise and "ahead" not in noise and "faster" not in noise
    assert ratio_words(PairedRatio(Summary.of([1.85]), 1.85, float("nan"), float("nan")), "sparse").endswith("no claim")


def test_human_numbers():
    assert human_seconds(27.312) == "27.3 s"
    assert human_seconds(0.0123) == "12.3 ms"
    assert human_seconds(4.2e-5) == "42 µs"
    assert human_seconds(600.0) == "10 min"
    assert human_number(27312.4) == "27,312" and human_number(12.345) == "12.3" and human_number(0.0042) == "0.0042"
    assert "e+" not in human_number(1e7) and human_seconds(None) == "–"


def test_pattern_cell_says_one_shot_or_recovered():
    from sparse_trt.bench.report import pattern_of
    from sparse_trt.bench.results import RunResult

    run = RunResult("s", "hf", "m", "cpu", "float32", SparseKernels(False, "none"), [], pattern="2:4")
    assert pattern_of(run) == "2:4, one-shot"
    rec = dataclasses.replace(run, quality={"recovery": {"tokens": 16384, "teacher": "smollm2"}})
    assert pattern_of(rec).startswith("2:4, recovered (") and "from smollm2" in pattern_of(rec)
    assert pattern_of(dataclasses.replace(run, pattern=None)) == "dense"


def _engine_report(precision: str) -> dict:
    return {"checkpoint": {"precision": precision}}


def test_report_flags_mixed_precision_pairs_and_uses_simulated_perplexity(tmp_path):
    """An FP8 sparse engine against a float16 dense one: flagged in bold and in the verdict, even when the flag
    was not recorded; the FP8 side's quality is its simulated figure, labelled so."""
    import torch

    d = FakeBackend("dense", ttft=0.02, step=0.01)
    s = FakeBackend("sparse", ttft=0.004, step=0.002, active=True)
    rd, rs, cmp = compare_benchmark(d, s, grid([1, 2], [4], [3], [1]), LoadSpec(requests=1, warmup=1), pairs=3)
    q_sparse = {"perplexity": {"perplexity": 10.1}, "perplexity_fp8_simulated": {"perplexity": 10.4}}
    rd = dataclasses.replace(rd, build_report=_engine_report("float16"), quality={"perplexity": {"perplexity": 10.0}})
    rs = dataclasses.replace(rs, pattern="2:4", build_report=_engine_report("FP8"), quality=q_sparse,
                             sparse_kernels=SparseKernels(True, "fake kernels", 4, 4))
    p = ResultsFile("compare", capture(torch.device("cpu")), [rd, rs], [cmp]).save(tmp_path / "m.json")
    res = build_report([p], tmp_path / "rep", gpu_hour_usd=2.0, plots=False)
    v = res.verdicts[0]
    assert v.answer.startswith("NOT LIKE WITH LIKE") and v.speed == "faster"
    assert v.ppl_ratio == pytest.approx(10.4 / 10.0)  # the simulated FP8 figure, not the unquantized 10.1
    assert any("dense 'dense' runs float16, sparse 'sparse' FP8" in r for r in v.reasons)
    assert any("sparse fp8 simulated" in r for r in v.reasons)
    md = res.markdown.read_text()
    assert "**Not like with like (precisions differ): dense `dense` runs float16, sparse `sparse` FP8" in md
    assert "| 10.4 (fp8 simulated) |" in md

    # the same pair at one precision: no flag; a quantized side without a simulated figure falls back, with a note
    rd2 = dataclasses.replace(rd, build_report=_engine_report("FP8"), quality={"perplexity_fp8_simulated": {"perplexity": 10.2}})
    rs2 = dataclasses.replace(rs, quality={"perplexity": {"perplexity": 10.1}})
    p2 = ResultsFile("compare", capture(torch.device("cpu")), [rd2, rs2], [cmp]).save(tmp_path / "s.json")
    res2 = build_report([p2], tmp_path / "rep2", gpu_hour_usd=2.0, plots=False)
    v2 = res2.verdicts[0]
    assert not v2.answer.startswith("NOT LIKE") and v2.ppl_ratio == pytest.approx(10.1 / 10.2)
    assert any("no simulated fp8 perplexity recorded" in r and "unquantized model's" in r for r in v2.reasons)
    md2 = res2.markdown.read_text()
    assert "Not like with like" not in md2 and "| 10.1 (unquantized) — no simulated fp8 perplexity recorded" in md2


def test_compare_refuses_mixed_engines_before_creating_backends(tmp_path):
    """Precisions come from the engine folders' files: the refusal comes before any backend (TensorRT-LLM is not
    even importable here) and writes nothing."""
    import json

    import torch

    from sparse_trt.bench.backends.base import BackendSpec
    from sparse_trt.bench.precision import MixedPrecisionError, declared_precision
    from sparse_trt.bench.session import Side, compare_to_file

    def engine(name, cfg_q, report=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"pretrained_config": {"dtype": "float16", "quantization": cfg_q},
                                                   "build_config": {}}))
        if report:
            (d / "build_report.json").write_text(json.dumps({"checkpoint": {"precision": report}}))
        return d

    dense = engine("dense", {"quant_algo": None})
    sparse = engine("sparse", {"quant_algo": "FP8"}, report="FP8")
    assert declared_precision("trtllm", str(dense), None, {}).key == "float16"
    assert declared_precision("trtllm", str(sparse), None, {}).source.endswith("build_report.json")
    assert declared_precision("trtllm", str(engine("s2", {"quant_algo": "FP8"})), None, {}).key == "FP8"
    assert declared_precision("triton", "model", None, {"engine_dir": str(sparse)}).key == "FP8"
    assert not declared_precision("triton", "model", None, {}).known
    cpu = torch.device("cpu")
    out = tmp_path / "c.json"
    with pytest.raises(MixedPrecisionError, match="dense 'd' is float16 .* but sparse 's' is FP8") as e:
        compare_to_file(Side("trtllm", BackendSpec(str(dense), cpu), "d"), Side("trtllm", BackendSpec(str(sparse), cpu), "s"),
                        grid([1], [4], [3], [1]), LoadSpec(requests=1), out, capture(cpu), pairs=1)
    assert "make 'd' FP8 too" in e.value.fix and "--allow-mixed-precision" in e.value.fix
    assert e.value.exit_code == 2 and not out.exists()
