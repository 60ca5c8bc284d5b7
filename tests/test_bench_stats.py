"""Percentiles, summaries, paired ratios, workload parsing and limits."""

import math

import numpy as np
import pytest

from sparse_trt.bench.errors import WorkloadError
from sparse_trt.bench.timing import Summary, paired_ratios, percentile
from sparse_trt.bench.workload import Limits, Workload, check_limits, grid, make_prompts, parse_int_list
from sparse_trt.core.errors import InputError


def test_percentiles_on_known_inputs():
    xs = list(range(1, 101))  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 90) == pytest.approx(90.1)
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    rng = np.random.default_rng(0)
    ys = rng.exponential(size=37).tolist()
    for q in (10, 50, 90, 99):
        assert percentile(ys, q) == pytest.approx(float(np.percentile(ys, q)))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_summary_and_ratios():
    s = Summary.of([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.min, s.max, s.p50) == (4, 2.5, 1.0, 4.0, 2.5)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert Summary.of([]).empty and math.isnan(Summary.of([]).mean)
    r = paired_ratios([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert (r.n, r.min, r.max) == (3, 2.0, 3.0)


def test_workload_parsing_and_grid():
    assert parse_int_list("1, 8,8,32", "--batch-sizes") == [1, 8, 32]
    for bad in ("", "a", "0", "-1"):
        with pytest.raises(InputError):
            parse_int_list(bad, "--batch-sizes")
    pts = grid([1, 8], [128, 2048], [128], [1])
    assert len(pts) == 4 and pts[0] == Workload(1, 128, 128, 1)
    p = make_prompts(50, 2, 7, seed=1)
    assert len(p) == 2 and len(p[0]) == 7 and all(3 <= t < 50 for t in p[0])
    assert p == make_prompts(50, 2, 7, seed=1)


def test_limits_name_the_limit():
    lim = Limits(max_batch_size=8, max_input_len=100, max_seq_len=256, source="engine config")
    check_limits([Workload(8, 100, 100)], lim, "trtllm")
    with pytest.raises(WorkloadError, match="max sequence length / context of 256"):
        check_limits([Workload(1, 200, 100)], lim, "trtllm")
    with pytest.raises(WorkloadError, match="max_input_len of 100"):
        check_limits([Workload(1, 101, 10)], lim, "trtllm")
    with pytest.raises(WorkloadError, match="max_batch_size of 8"):
        check_limits([Workload(9, 10, 10)], lim, "trtllm")
