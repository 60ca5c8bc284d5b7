"""CLI end to end on CPU: bench run/compare/gemm/synth and report, with bad-input exit codes."""

import json

import pytest
from typer.testing import CliRunner

from sparse_trt.bench.results import ResultsFile
from sparse_trt.cli.main import app

runner = CliRunner()
def text(r) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(r.output.split())


SMALL = ["--batch-sizes", "1", "--input-lens", "8", "--output-lens", "3", "--warmup", "1", "--requests", "2", "--device", "cpu"]
PAIRS = ["--iters", "2"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_dirs):
    import tiny

    cfg = tmp_path_factory.mktemp("cfg") / "config.json"
    cfg.write_text(tiny.config("llama").to_json_string())
    out = tmp_path_factory.mktemp("synth") / "pair"
    r = runner.invoke(app, ["bench", "synth", str(out), "--config", str(cfg), "--dtype", "float32", "--layers", "1"])
    assert r.exit_code == 0, r.output
    return out / "dense", out / "sparse-2of4"


def test_compare_then_report(tmp_path, pair):
    dense, sparse = pair
    res = tmp_path / "cmp.json"
    r = runner.invoke(app, ["bench", "compare", str(dense), str(sparse), "-o", str(res), *SMALL, *PAIRS])
    assert r.exit_code == 0, r.output
    assert "NO SPARSE KERNELS RAN" in text(r) and "NOISE BY CONSTRUCTION" in text(r)
    f = ResultsFile.load(res)
    assert f.kind == "compare" and [x.label for x in f.runs] == ["dense", "sparse"]
    assert f.comparisons[0].points[0].order == ["dense", "sparse"]
    assert f.runs[1].pattern == "2:4" and f.runs[1].sparse_kernels.eligible_layers == 7
    assert f.comparisons[0].kind == "noise" and f.runs[0].points[0].load.windows == 2
    r = runner.invoke(app, ["bench", "compare", str(dense), str(sparse), "-o", str(res), *SMALL, *PAIRS])
    assert r.exit_code == 2 and "already exists" in text(r)
    r = runner.invoke(app, ["report", str(res), "-o", str(tmp_path / "rep"), "--gpu-hour-usd", "3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "speedup.png").is_file()


def test_run_and_bad_inputs(tmp_path, pair):
    dense, _ = pair
    res = tmp_path / "run.json"
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(res), "--label", "d", *SMALL])
    assert r.exit_code == 0, r.output
    assert json.loads(res.read_text())["runs"][0]["label"] == "d"
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(tmp_path / "x.json"), "--backend", "torch-2of4", *SMALL])
    assert r.exit_code == 7 and "CUDA" in text(r)
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(tmp_path / "x.json"), *SMALL[:2], "--input-lens", "250",
                            "--output-lens", "10", "--device", "cpu"])
    assert r.exit_code == 2 and "max_position_embeddings" in text(r)
    r = runner.invoke(app, ["bench", "run", str(tmp_path / "nope"), "-o", str(tmp_path / "x.json"), *SMALL])
    assert r.exit_code == 2 and "does not exist" in text(r)
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(tmp_path / "x.json"), "--backend", "trtllm", *SMALL])
    assert r.exit_code == 2 and "not a TensorRT-LLM engine" in text(r)
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(tmp_path / "x.json"), "--backend", "warp", *SMALL])
    assert r.exit_code == 2 and "unknown backend" in text(r)
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(tmp_path / "x.json"), *SMALL, "--duration", "1"])
    assert r.exit_code == 2 and "not both" in text(r)
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(tmp_path / "x.json"), *SMALL, "--request-rate", "0"])
    assert r.exit_code == 2 and "--request-rate" in text(r)
    res2 = tmp_path / "poisson.json"
    r = runner.invoke(app, ["bench", "run", str(dense), "-o", str(res2), "--input-lens", "8", "--output-lens", "2",
                            "--device", "cpu", "--concurrency", "2", "--request-rate", "50", "--requests", "4", "--warmup", "0"])
    assert r.exit_code == 0, r.output
    pt = ResultsFile.load(res2).runs[0].points[0]
    assert pt.load.mode == "poisson" and pt.load.request_rate == 50 and pt.requests == 4
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "empty.json").write_text("")
    r = runner.invoke(app, ["report", str(tmp_path / "empty.json"), "-o", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "empty" in text(r)


def test_gemm_cli_shapes_on_cpu(tmp_path):
    out = tmp_path / "gemm.json"
    r = runner.invoke(app, ["bench", "gemm", "--shapes", "64x128,128x64", "--tokens", "1,4", "--device", "cpu",
                            "--iters", "2", "--warmup", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "not available" in text(r) and "no GEMM was timed" in text(r)
    g = ResultsFile.load(out).gemm
    assert all(row.speedup is None for row in g.rows) and len(g.onnx_checks) == 2
    r = runner.invoke(app, ["bench", "gemm", "-o", str(tmp_path / "g2.json")])
    assert r.exit_code == 2 and "either a MODEL or --shapes" in text(r)
    r = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "rep"), "--no-plots"])
    assert r.exit_code == 0 and "GEMM probe" in (tmp_path / "rep" / "report.md").read_text()


def test_demo_bench_step(tmp_path, pair):
    import torch

    from sparse_trt.cli.bench import demo_bench_step

    dense, sparse = pair
    rep = demo_bench_step(str(dense), sparse, tmp_path, torch.device("cpu"))
    md = (rep / "report.md").read_text()
    assert "NO SPARSE KERNELS RAN" in md and (tmp_path / "bench" / "compare.json").is_file()
    assert "NOISE BY CONSTRUCTION" in md and "sparse ahead" not in md
    assert ResultsFile.load(tmp_path / "bench" / "compare.json").comparisons[0].kind == "noise"


def test_compare_refuses_different_models(tmp_path, pair, tiny_dirs):
    dense, _ = pair  # 1 layer
    other = tiny_dirs("llama")  # 2 layers
    out = tmp_path / "c.json"
    r = runner.invoke(app, ["bench", "compare", str(dense), str(other), "-o", str(out), *SMALL, "--iters", "1"])
    assert r.exit_code == 2 and "different models" in text(r) and "num_hidden_layers" in text(r)
    assert "--allow-different-models" in text(r) and not out.exists()
    r = runner.invoke(app, ["bench", "compare", str(dense), str(other), "-o", str(out), *SMALL, "--iters", "1",
                            "--allow-different-models"])
    assert r.exit_code == 0, r.output
    assert "different models compared on request" in text(r)


@pytest.mark.parametrize("cmd", [["bench", "run"], ["bench", "compare"], ["bench", "gemm"], ["bench", "synth"], ["report"]])
def test_every_option_has_help(cmd):
    import click
    import typer.main

    group = typer.main.get_command(app)
    c = group
    for name in cmd:
        c = c.commands[name]
    missing = [p.name for p in c.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"{' '.join(cmd)}: options without help: {missing}"


def test_compare_table_keeps_brackets():
    from rich.console import Console

    from sparse_trt.bench.results import ComparePoint, Comparison, PairedRatio
    from sparse_trt.bench.timing import Summary
    from sparse_trt.bench.workload import Workload
    from sparse_trt.cli.bench import compare_table

    r = PairedRatio(Summary.of([1.2, 1.3]), 1.25, 1.2, 1.3)
    cmp = Comparison("dense", "sparse", [ComparePoint(Workload(1, 8, 3, 1), 2, r, r, r, r)], "sparse")
    con = Console(record=True, width=300)
    con.print(compare_table(cmp))
    shown = con.export_text()
    assert "[95% CI]" in shown and "sparse ahead: ratio 1.25 (95% CI 1.20–1.30)" in shown


@pytest.fixture(scope="module")
def quantized_pair(tmp_path_factory, tiny_dirs):
    """A dense tiny LLaMA and the same model magnitude-2:4-pruned and FP8-quantized (quantize on its folder)."""
    import tiny
    import torch
    from test_export_support import pruned_tiny

    from sparse_trt.data.text import parse_source
    from sparse_trt.quantize.api import QuantizeOptions, quantize_model
    from sparse_trt.quantize.formats import parse_format

    root = tmp_path_factory.mktemp("qpair")
    calib = root / "calib.txt"
    calib.write_text(tiny.corpus_text(6000, 3))
    pruned = pruned_tiny("llama", root / "pruned")
    q = quantize_model(str(pruned), root / "fp8", QuantizeOptions(parse_format("fp8"), None, parse_source(str(calib)),
                                                                  nsamples=4, seqlen=32), device=torch.device("cpu"))
    return tiny_dirs("llama"), pruned, q.out, calib


def test_compare_refuses_mixed_precision_before_running(tmp_path, quantized_pair):
    dense, _, fp8, _ = quantized_pair
    out = tmp_path / "c.json"
    r = runner.invoke(app, ["bench", "compare", str(dense), str(fp8), "-o", str(out), *SMALL, "--iters", "1"])
    t = text(r)
    assert r.exit_code == 2, r.output
    assert "is float32" in t and "is FP8" in t and "quantization.json" in t and "not like with like" in t
    assert "--allow-mixed-precision" in t and "--format fp8" in t  # the fix: quantize the dense side the same way
    assert not out.exists()
    # the same refusal whatever the backends: it is decided from the files before any backend exists
    from sparse_trt.bench.precision import MixedPrecisionError, declared_precision

    assert declared_precision("hf", str(fp8), None, {}).key == "FP8"
    assert declared_precision("hf", str(dense), None, {}).key == "float32"
    assert declared_precision("hf", str(dense), __import__("torch").float16, {}).key == "float16"
    assert not declared_precision("hf", "org/some-hub-model", None, {}).known
    # engines find their quality in the checkpoint / source folders: a quantized one says so too
    from sparse_trt.bench.backends.engine_info import manifest_quality

    pattern, quality = manifest_quality(fp8)
    assert pattern == "2:4" and quality["quantization"]["format"] == "fp8" and quality["quantization"]["excluded"] == []
    assert issubclass(MixedPrecisionError, __import__("sparse_trt.core.errors", fromlist=["InputError"]).InputError)


def test_compare_mixed_precision_on_request_is_recorded_and_reported(tmp_path, quantized_pair):
    dense, _, fp8, calib = quantized_pair
    from sparse_trt.data.text import parse_source
    from sparse_trt.eval.api import run_eval

    src, cpu = parse_source(str(calib)), __import__("torch").device("cpu")
    plain = run_eval(str(fp8), src, 32, 2, cpu, simulate_quant=False)  # recorded as quality.perplexity
    out = tmp_path / "c.json"
    r = runner.invoke(app, ["bench", "compare", str(dense), str(fp8), "-o", str(out), *SMALL, "--iters", "1",
                            "--allow-mixed-precision"])
    assert r.exit_code == 0, r.output
    assert "NOT LIKE WITH LIKE" in text(r) and "mixed precisions compared on request" in text(r)
    f = ResultsFile.load(out)
    assert "is FP8" in f.comparisons[0].mixed_precision and "is float32" in f.comparisons[0].mixed_precision
    quant = f.runs[1].quality["quantization"]
    assert quant["format"] == "fp8" and quant["quant_algo"] == "FP8" and quant["perplexity_key"] is None
    # no simulated figure yet: the report falls back to the unquantized perplexity and says so
    rep = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "rep"), "--gpu-hour-usd", "2", "--no-plots"])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    from sparse_trt.bench.report import human_number

    assert "**Not like with like (compared on request with --allow-mixed-precision)" in md
    # hf ran the FP8 folder's 14 linears as FP8 GEMMs (torch._scaled_mm has a CPU kernel; --opt fp8=auto)
    assert "FP8 (quantization.json; hf ran FP8 GEMMs: 14 dense, 0 2:4; KV cache not quantized)" in md
    assert (f"{human_number(plain.perplexity, 4)} (unquantized) — no simulated fp8 perplexity recorded "
            "(perplexity_fp8_simulated): the figure shown is the unquantized model's") in md

    # with eval's simulated figure recorded in the folder, bench records and the report shows that one
    sim = run_eval(str(fp8), src, 32, 2, cpu)
    out2 = tmp_path / "c2.json"
    r = runner.invoke(app, ["bench", "compare", str(dense), str(fp8), "-o", str(out2), *SMALL, "--iters", "1",
                            "--allow-mixed-precision"])
    assert r.exit_code == 0, r.output
    q = ResultsFile.load(out2).runs[1].quality
    assert q["quantization"]["perplexity_key"] == "perplexity_fp8_simulated"
    assert q["perplexity_fp8_simulated"]["perplexity"] == pytest.approx(sim.perplexity)
    rep = runner.invoke(app, ["report", str(out2), "-o", str(tmp_path / "rep2"), "--gpu-hour-usd", "2", "--no-plots"])
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert sim.perplexity != plain.perplexity
    assert f"{human_number(sim.perplexity, 4)} (fp8 simulated)" in md and "no simulated fp8" not in md


def test_synth_streamed_writes_a_loadable_sharded_checkpoint(tmp_path):
    import json

    import tiny

    from sparse_trt.models.loading import load_model

    cfg = tmp_path / "config.json"
    cfg.write_text(tiny.config("llama").to_json_string())
    out = tmp_path / "big"
    r = runner.invoke(app, ["bench", "synth", str(out), "--config", str(cfg), "--dtype", "float32", "--streamed",
                            "--tokenizer", "none"])
    assert r.exit_code == 0, r.output
    assert "layer by layer" in r.output and not (out / "dense").exists()
    loaded = load_model(str(out), with_tokenizer=False, streaming=True)
    assert loaded.layers is not None  # streamable: decoder layers stay on disk until asked for
    whole = load_model(str(out), with_tokenizer=False)
    assert sum(p.numel() for p in whole.model.parameters()) > 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == tiny.config("llama").num_hidden_layers
    # the built-in tokenizer's 49152 ids do not fit the tiny vocabulary: refused, nothing written
    r = runner.invoke(app, ["bench", "synth", str(tmp_path / "bad"), "--config", str(cfg), "--dtype", "float32",
                            "--streamed"])
    assert r.exit_code == 2 and "vocab_size" in r.output and not (tmp_path / "bad").exists()
    # a vocabulary the built-in tokenizer fits: it is copied, so the checkpoint can be calibrated
    wide = json.loads(cfg.read_text()) | {"vocab_size": 49152}
    cfg.write_text(json.dumps(wide))
    r = runner.invoke(app, ["bench", "synth", str(tmp_path / "tok"), "--config", str(cfg), "--dtype", "float32",
                            "--streamed", "--layers", "1"])
    assert r.exit_code == 0, r.output
    assert load_model(str(tmp_path / "tok"), streaming=True).tokenizer is not None
