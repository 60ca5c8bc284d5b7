"""`sparse-trt plan`: selection logic, plan file round trip, `prune --plan`, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from sparse_trt.cli.main import app
from sparse_trt.core.errors import InputError
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import NM
from sparse_trt.data.text import parse_source
from sparse_trt.plan import PlanRequest, choose_count, gemm_speedups, load_plan, make_plan, rank_linears
from sparse_trt.plan import plan as plan_mod
from sparse_trt.prune.api import PruneRequest, run_prune

CPU = torch.device("cpu")


def test_gemm_speedups_median_per_shape():
    rows = [((64, 128), 1.2), ((64, 128), 1.6), ((64, 128), 1.4), ((32, 64), None), ((32, 64), 0.9)]
    assert gemm_speedups(rows) == {(64, 128): 1.4, (32, 64): 0.9}


def test_plan_settings_for_prune():
    plan = plan_mod.Plan(model={"source": "m"}, pattern="2:4", linears={}, method="sparsegpt-refit",
                         details={"options": {"refit": 4}})
    assert plan.prune_settings(None, {}) == ("sparsegpt-refit", {"refit": "4"}, None)
    assert plan.prune_settings(None, {"refit": "2"}) == ("sparsegpt-refit", {"refit": "2"}, None)
    method, options, note = plan.prune_settings("wanda", {})
    assert (method, options) == ("wanda", {}) and "made with sparsegpt-refit" in note


def test_rank_by_damage_per_speed_and_gemm_weighting():
    errs = {"a": 0.1, "b": 0.1, "c": 0.05}
    shapes = {"a": (64, 64), "b": (64, 256), "c": (64, 64)}
    order = [r["name"] for r in rank_linears(errs, shapes, None)]
    assert order == ["a", "c", "b"]
    assert order[-1] == "b"  # same damage, 4x the work: last to leave sparse
    # A measured speedup <= 1 gains nothing: first to leave sparse, whatever its damage.
    probe = {(64, 64): 1.5, (64, 256): 0.9}
    assert rank_linears(errs, shapes, probe)[0]["name"] == "b"


def test_choose_count_bisects_and_reports_unreachable():
    ppl = {k: 20.0 - k for k in range(11)}  # 10 linears, each restored one lowers ppl by 1
    calls = []

    def f(k):
        calls.append(k)
        return ppl[k]

    k, _ = choose_count(f, 10, 14.5, dense_fallback=True)
    assert k == 6 and len(calls) <= 6
    with pytest.raises(plan_mod._Unreachable) as e:
        choose_count(lambda k: ppl[k], 10, 10.5, dense_fallback=True)
    assert e.value.best == 11.0  # one linear still sparse


def _plan_req(src, out, calib_file, **kw):
    base = dict(model=str(src), out=out, calib=parse_source(str(calib_file)), eval_data=parse_source(str(calib_file)),
                nsamples=4, seqlen=32, eval_windows=2, device=CPU)
    base.update(kw)
    return PlanRequest(**base)


def test_plan_round_trip_and_prune_honours_it(tiny_dirs, calib_file, tmp_path):
    src = tiny_dirs("llama")
    path = tmp_path / "plan.json"
    plan = make_plan(_plan_req(src, path, calib_file, keep_dense=3))
    d = json.loads(path.read_text())
    assert d["format"] == "sparse_trt.plan" and d["version"] == 1 and d["model"]["source"] == str(src)
    again = load_plan(path)
    assert again.linears == plan.linears and again.model == plan.model
    dense = sorted(k for k, v in again.linears.items() if v is None)
    assert len(dense) == 3 and dense == sorted(r["name"] for r in d["ranking"][:3])
    assert set(again.layer_patterns().values()) == {None, NM(2, 4)}

    out = tmp_path / "pruned"
    res = CliRunner().invoke(app, ["prune", str(src), "-o", str(out), "--plan", str(path), "--calib", str(calib_file),
                                   "--nsamples", "4", "--seqlen", "32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = Manifest.load(out)
    for r in m.layers:
        if r.name in dense:
            assert r.pattern is None and r.sparsity < 0.01
        else:
            assert r.pattern == "2:4" and abs(r.sparsity - 0.5) < 1e-6
    assert m.model["plan"] == str(path)
    assert m.method == plan.method == "sparsegpt"  # no --method: the plan's


def test_prune_plan_uses_the_plans_method_unless_told(tiny_dirs, calib_file, tmp_path):
    src = tiny_dirs("llama")
    path = tmp_path / "plan.json"
    make_plan(_plan_req(src, path, calib_file, keep_dense=2, method="sparsegpt-refit", options={"refit": "3"}))
    common = ["--plan", str(path), "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "32", "--device", "cpu"]
    res = CliRunner().invoke(app, ["prune", str(src), "-o", str(tmp_path / "a"), *common])
    assert res.exit_code == 0, res.output
    m = Manifest.load(tmp_path / "a")
    assert m.method == "sparsegpt-refit" and m.method_options["refit"] == 3  # the plan's method and options
    res = CliRunner().invoke(app, ["prune", str(src), "-o", str(tmp_path / "b"), "--method", "magnitude", *common])
    assert res.exit_code == 0, res.output
    assert "plan was made with sparsegpt-refit" in res.output
    assert Manifest.load(tmp_path / "b").method == "magnitude"


def test_plan_for_another_model_names_it(tiny_dirs, calib_file, tmp_path):
    path = tmp_path / "plan.json"
    make_plan(_plan_req(tiny_dirs("llama"), path, calib_file, keep_dense=1))
    other = tiny_dirs("gpt2")
    req = PruneRequest(model=str(other), out=tmp_path / "o", pattern=NM(2, 4), calib=parse_source(str(calib_file)),
                       nsamples=4, seqlen=32, device=CPU, layer_patterns=load_plan(path).layer_patterns(),
                       plan_source=str(path), plan_model=load_plan(path).model_name())
    with pytest.raises(InputError, match=r"made for .*llama.*does not have"):
        run_prune(req)
    assert not (tmp_path / "o").exists()


def test_unreachable_budget_says_best_and_writes_nothing(tiny_dirs, calib_file, tmp_path, monkeypatch):
    import sparse_trt.eval.perplexity as pp

    def fake(model, windows, device, **kw):  # nll grows with the fraction of zero weights: dense is best
        ws = [p for n, p in model.named_parameters() if p.dim() == 2 and "proj" in n]
        return sum(float((w == 0).float().mean()) for w in ws), 1

    monkeypatch.setattr(pp, "perplexity", fake)
    path = tmp_path / "plan.json"
    with pytest.raises(InputError, match=r"cannot be met .* best reachable is [0-9.]+ \(\+") as e:
        make_plan(_plan_req(tiny_dirs("llama"), path, calib_file, budget_ppl=0.001))
    assert "raise --budget-ppl" in e.value.fix
    assert not path.exists()
    plan = make_plan(_plan_req(tiny_dirs("llama"), path, calib_file, budget_ppl=100 * (math.exp(3.6) - 1), overwrite=True))
    assert plan.details["estimate"]["fallback_count"] == 7  # 7 sparse linears x nll 0.5 <= 3.6


@pytest.mark.parametrize("content,match", [
    ("{", "not readable JSON"),
    ('{"format": "x"}', "not a sparse_trt plan"),
    ('{"format": "sparse_trt.plan", "version": 99}', "version 99"),
    ('{"format": "sparse_trt.plan", "version": 1, "model": {}, "pattern": "2:4", "linears": {"a": "3:2"}}', "invalid pattern"),
])
def test_bad_plan_files(tmp_path, content, match):
    p = tmp_path / "p.json"
    p.write_text(content)
    with pytest.raises(InputError, match=match):
        load_plan(p)
    with pytest.raises(InputError, match="does not exist"):
        load_plan(tmp_path / "missing.json")


def test_plan_cli_bad_input(tiny_dirs, calib_file, tmp_path):
    r = CliRunner().invoke(app, ["plan", str(tiny_dirs("llama")), "-o", str(tmp_path / "p.json"), "--keep-dense", "1",
                                 "--budget-ppl", "+5%"])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = CliRunner().invoke(app, ["plan", str(tiny_dirs("llama")), "-o", str(tmp_path / "p.json"), "--keep-dense", "1",
                                 "--method", "nope"])
    assert r.exit_code == 2 and "unknown" in r.output
    assert not (tmp_path / "p.json").exists()
