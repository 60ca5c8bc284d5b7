"""Results JSON: round trip, strictness, foreign/empty files."""

import json
import math

import pytest

from sparse_trt.bench.environment import capture
from sparse_trt.bench.errors import ResultsError
from sparse_trt.bench.results import (
    ComparePoint,
    Comparison,
    Conditions,
    GemmResult,
    GemmRow,
    HostSnapshot,
    LoadSettings,
    MemoryStats,
    PairedRatio,
    PointResult,
    ResultsFile,
    RunResult,
    ServerMemory,
    SparseKernels,
)
from sparse_trt.bench.timing import Summary
from sparse_trt.bench.workload import Workload


def sample_results() -> ResultsFile:
    w = Workload(2, 16, 8, 1)
    s = Summary.of([0.1, 0.2, 0.3])
    mem = MemoryStats(100, None, None, None, None, 5000, ["CPU run"], scope="client")
    cond = Conditions(HostSnapshot(1.0, [1.5, 1.2, 1.0]), HostSnapshot(2.0, [1.7, 1.3, 1.0], {"temperature_c": 60.0}),
                      2, 95.0, 0.5)
    load = LoadSettings("closed-loop", 1, None, 1, 3, None, 3)
    pt = PointResult(w, load, 3, 6, 96, 48, 0.9, s, s, s, s, s, 53.3, 160.0, 6.7, mem, cond,
                     ServerMemory("local server process tree RSS (pid 1, 2 processes)", 10**9), [0.3, 0.3, 0.3], [16, 16, 16])
    run = RunResult("dense", "hf", "m", "cpu", "float32", SparseKernels(False, "none"), [pt], quality={"perplexity": {"perplexity": 9.5}},
                    token_counts="model")
    r = PairedRatio(s, 0.2, 0.1, 0.3)
    cmp = Comparison("dense", "sparse", [ComparePoint(w, 3, r, r, r, r, ["dense", "sparse", "dense"])], "noise")
    gemm = GemmResult("cpu", "--shapes", [GemmRow([8, 16], 1, "float16", "torch", "not available: cpu"),
                                          GemmRow([8, 16], 4, "float16", "torch", "ok", s, Summary.of([]), 1.5, 0.0)])
    import torch

    return ResultsFile("compare", capture(torch.device("cpu"), ["sparse-trt", "x"]), [run], [cmp], gemm)


def test_round_trip(tmp_path):
    r = sample_results()
    p = r.save(tmp_path / "r.json")
    back = ResultsFile.load(p)
    assert back.to_dict() == r.to_dict()
    assert back.runs[0].points[0].workload == Workload(2, 16, 8, 1)
    assert math.isnan(back.gemm.rows[1].sparse_s.mean)  # NaN stored as null, read back as NaN
    d = json.loads(p.read_text())
    assert back.runs[0].points[0].window_throughputs == pytest.approx([16 / 0.3] * 3)
    assert d["schema_version"] == 2 and d["environment"]["command_line"] == ["sparse-trt", "x"]
    assert d["environment"]["versions"]["torch"]


def test_unknown_keys_and_versions_rejected(tmp_path):
    d = sample_results().to_dict()
    d["runs"][0]["points"][0]["surprise"] = 1
    with pytest.raises(ResultsError, match="unknown field"):
        ResultsFile.from_dict(d)
    d = sample_results().to_dict()
    d["schema_version"] = 1  # the waves-era format: metrics meant something else
    with pytest.raises(ResultsError, match="re-run"):
        ResultsFile.from_dict(d)
    d = sample_results().to_dict()
    d["schema_version"] = 99
    with pytest.raises(ResultsError, match="schema_version"):
        ResultsFile.from_dict(d)
    d = sample_results().to_dict()
    d["runs"][0]["points"][0]["sequences"] = "six"
    with pytest.raises(ResultsError, match="integer"):
        ResultsFile.from_dict(d)


def test_empty_and_foreign_files(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ResultsError, match="empty"):
        ResultsFile.load(tmp_path / "empty.json")
    (tmp_path / "foreign.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ResultsError, match="not a sparse_trt benchmark results file"):
        ResultsFile.load(tmp_path / "foreign.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="JSON object"):
        ResultsFile.load(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ResultsError, match="not JSON"):
        ResultsFile.load(tmp_path / "bad.json")
    with pytest.raises(ResultsError, match="does not exist"):
        ResultsFile.load(tmp_path / "missing.json")
