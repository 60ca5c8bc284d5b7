"""sparse-trt quantize: scales, zeros kept, the artifact, quantized export, simulated quantization, bad input."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from safetensors import safe_open
from test_export_support import magnitude_2of4, pruned_tiny
from typer.testing import CliRunner

from sparse_trt.cli.main import app
from sparse_trt.core.errors import CalibrationError, InputError
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.data.text import parse_source
from sparse_trt.eval.api import run_eval
from sparse_trt.eval.simquant import dequantized_weight, simulated_quantization
from sparse_trt.export.trtllm import export_trtllm
from sparse_trt.models.loading import load_model
from sparse_trt.quantize import scales as sc
from sparse_trt.quantize.api import QuantizeOptions, quantize_model
from sparse_trt.quantize.errors import AlreadyQuantizedError, QuantExportError, QuantSpecError
from sparse_trt.quantize.formats import FORMATS, parse_format, parse_kv_format
from sparse_trt.quantize.spec import QUANT_NAME, SCALES_NAME, load_quant_spec

CPU = torch.device("cpu")
runner = CliRunner()


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    text = root / "calib.txt"
    text.write_text(tiny.corpus_text(20000, 3))
    return pruned_tiny("llama", root / "llama"), str(text), root


def _opts(calib, fmt="fp8", kv=None, **kw):
    f = parse_format(fmt)
    return QuantizeOptions(f, parse_kv_format(kv, f), parse_source(calib), nsamples=kw.pop("nsamples", 4), seqlen=kw.pop("seqlen", 32), **kw)


# ----------------------------------------------------------------------------- pure functions


def test_smoothing_and_quantization_keep_2of4_zeros():
    g = torch.Generator().manual_seed(0)
    w = magnitude_2of4(torch.randn(48, 64, generator=g)).half()
    act = torch.rand(64, generator=g) * 10
    act[3] = 0  # a channel that never fired is not smoothed
    s = sc.smoothing_factors(act, w, 0.5)
    assert s[3] == 1 and torch.all(s >= sc.SMOOTH_MIN) and torch.all(s <= sc.SMOOTH_MAX)
    ws = sc.smooth_weight(w, s)
    assert torch.equal(ws == 0, w == 0) or nm_violations(ws, NM(2, 4)) == 0
    rs = sc.scale_from_amax(sc.row_amax(ws), 127.0)
    q = sc.quantize_per_row(ws, rs, 127.0, torch.int8)
    assert q.dtype == torch.int8 and nm_violations(q, NM(2, 4)) == 0
    assert int(q.abs().max()) == 127
    f8 = sc.quantize_per_tensor(w, sc.scale_from_amax(sc.tensor_amax(w), 448.0), torch.float8_e4m3fn)
    assert nm_violations(f8.float(), NM(2, 4)) == 0 and torch.equal(f8.float() == 0, w == 0)


def test_scales_and_fake_quant():
    assert torch.equal(sc.scale_from_amax(torch.tensor(0.0), 448.0), torch.tensor([1.0]))  # never-fired tensor: scale 1
    assert sc.scale_from_amax(torch.tensor(896.0), 448.0).shape == (1,)
    x = torch.tensor([0.0, 1.0, -3.0, 1000.0])
    y = sc.fake_quant(x, torch.tensor([1.0]), 448.0, torch.float8_e4m3fn)
    assert y.tolist() == [0.0, 1.0, -3.0, 448.0]  # exact for representable values, saturates at 448
    z = sc.fake_quant(torch.tensor([0.26, -200.0]), torch.tensor([0.5]), 127.0, torch.int8)
    assert z.tolist() == [0.5, -64.0]
    assert sc.kv_scale(100.0, 448.0, 1.0) == 1.0 and sc.kv_scale(127.0, 127.0, 0.0) == 1.0


# --------------------------------------------------------------------- quantize + export


@pytest.mark.parametrize("fmt", ["fp8", "int8-sq"])
def test_quantize_keeps_weights_and_exports(env, tmp_path, fmt):
    pruned, calib, _ = env
    kv = {"fp8": "fp8", "int8-sq": "int8"}[fmt]
    res = quantize_model(str(pruned), tmp_path / "q", _opts(calib, fmt, kv, alpha=0.5), device=CPU)
    out = res.out
    # the weights are the input's, byte for byte; the artifact is versioned and complete
    assert (out / "model.safetensors").read_bytes() == (pruned / "model.safetensors").read_bytes()
    d = json.loads((out / QUANT_NAME).read_text())
    assert d["version"] == 1 and d["format"] == fmt and d["kv_cache"] == kv and d["pattern"] == "2:4"
    assert d["calibration"]["nsamples"] == 4 and d["calibration"]["seqlen"] == 32
    assert len(d["linears"]) == 2 * 7 and len(d["kv"]) == 2
    assert res.checked_weights >= 14
    spec = load_quant_spec(out)
    assert (out / SCALES_NAME).is_file() == (fmt == "int8-sq")
    q = spec.linear("model.layers.0.self_attn.q_proj")
    assert q.group == tuple(f"model.layers.0.self_attn.{x}_proj" for x in "qkv")
    # fused members share the activation scale
    assert {spec.linear(m).input_scale for m in q.group} == {q.input_scale}

    ckpt = tmp_path / "ckpt"
    export_trtllm(out, ckpt, dtype=torch.float16, tp=2)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == FORMATS[fmt].quant_algo
    assert cfg["quantization"]["kv_cache_quant_algo"] == {"fp8": "FP8", "int8": "INT8"}[kv]
    assert (ckpt / QUANT_NAME).is_file()
    for r in range(2):
        t = _read(ckpt / f"rank{r}.safetensors")
        for name in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"):
            w = t[f"transformer.layers.1.{name}.weight"]
            assert w.dtype == FORMATS[fmt].weight_dtype
            assert nm_violations(w.float() if fmt == "fp8" else w, NM(2, 4)) == 0
            assert t[f"transformer.layers.1.{name}.activation_scaling_factor"].dtype == torch.float32
            ws = t[f"transformer.layers.1.{name}.weights_scaling_factor"]
            assert ws.numel() == (1 if fmt == "fp8" else w.shape[0])
            if fmt == "int8-sq":
                assert t[f"transformer.layers.1.{name}.prequant_scaling_factor"].shape == (w.shape[1],)
        assert t["transformer.layers.0.attention.kv_cache_scaling_factor"].shape == (1,)
        assert t["lm_head.weight"].dtype == torch.float16  # excluded from quantization

    # pipeline parallel: rank 1 holds layer 1 renumbered to 0, with the same quantized tensors and KV scales
    export_trtllm(out, tmp_path / "one", dtype=torch.float16)
    export_trtllm(out, tmp_path / "pp", dtype=torch.float16, pp=2)
    one, pp1 = _read(tmp_path / "one" / "rank0.safetensors"), _read(tmp_path / "pp" / "rank1.safetensors")
    for name, v in pp1.items():
        if name.startswith("transformer.layers.0."):
            w = one[name.replace("layers.0.", "layers.1.")]
            assert w.dtype == v.dtype and torch.equal(w.view(torch.uint8) if w.element_size() == 1 else w,
                                                      v.view(torch.uint8) if v.element_size() == 1 else v), name
    assert "transformer.layers.0.attention.kv_cache_scaling_factor" in pp1


def test_simulated_weights_equal_the_exported_ones(env, tmp_path):
    """eval's simulation multiplies with exactly the weights the checkpoint holds (dequantized)."""
    pruned, calib, _ = env
    res = quantize_model(str(pruned), tmp_path / "q", _opts(calib, "int8-sq", alpha=0.5), device=CPU)
    export_trtllm(res.out, tmp_path / "ckpt", dtype=torch.float32)
    t = _read(tmp_path / "ckpt" / "rank0.safetensors")
    spec = load_quant_spec(res.out)
    loaded = load_model(str(res.out))
    mod = loaded.model.model.layers[0].mlp.down_proj
    sim = dequantized_weight(spec, "model.layers.0.mlp.down_proj", mod.weight.data)
    exported = sc.dequantize(t["transformer.layers.0.mlp.proj.weight"], t["transformer.layers.0.mlp.proj.weights_scaling_factor"])
    assert torch.equal(sim, exported)
    assert nm_violations(sim, NM(2, 4)) == 0


@pytest.mark.parametrize("fmt", ["fp8", "int8-sq"])
def test_simulated_quantization_eval(env, tmp_path, fmt):
    pruned, calib, _ = env
    kv = {"fp8": "fp8", "int8-sq": "int8"}[fmt]
    res = quantize_model(str(pruned), tmp_path / "q", _opts(calib, fmt, kv), device=CPU)
    src = parse_source(calib)
    fp = run_eval(str(res.out), src, 32, 4, CPU, simulate_quant=False, record=False)
    q = run_eval(str(res.out), src, 32, 4, CPU, record=True)
    assert q.perplexity != fp.perplexity and abs(q.perplexity / fp.perplexity - 1) < 0.05
    assert f"[{fmt} simulated]" in q.model
    assert f"perplexity_{fmt}_simulated" in json.loads((res.out / "sparsity.json").read_text())["quality"]
    loaded = load_model(str(res.out))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ids = torch.arange(1, 33)[None]
    ref = loaded.model(ids).logits
    with simulated_quantization(loaded.model, loaded.adapter, load_quant_spec(res.out)) as info:
        assert info.linears == 14 and info.kv_layers == 2
        sim = loaded.model(ids).logits
    assert not torch.equal(ref, sim)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())  # restored
    assert torch.equal(loaded.model(ids).logits, ref)


# ------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_nothing_is_written(env, tmp_path):
    pruned, calib, root = env
    first = quantize_model(str(pruned), tmp_path / "q", _opts(calib), device=CPU)
    with pytest.raises(AlreadyQuantizedError, match="already quantized"):
        quantize_model(str(first.out), tmp_path / "again", _opts(calib), device=CPU)
    gpt2 = pruned_tiny("gpt2", root / "gpt2")
    with pytest.raises(QuantExportError, match="gpt2 family"):
        quantize_model(str(gpt2), tmp_path / "g", _opts(calib), device=CPU)
    with pytest.raises(InputError, match="--kv-cache int8 with --format fp8"):
        parse_kv_format("int8", parse_format("fp8"))
    with pytest.raises(InputError, match="not supported"):
        parse_format("int4")
    with pytest.raises(CalibrationError, match="too short"):
        _opts(calib, nsamples=2, seqlen=16)
    short = root / "short.txt"
    short.write_text("the river and the sea. " * 20)
    with pytest.raises(CalibrationError, match="tokens"):
        quantize_model(str(pruned), tmp_path / "s", _opts(str(short), nsamples=8, seqlen=64), device=CPU)
    with pytest.raises(InputError, match="alpha"):
        _opts(calib, "int8-sq", alpha=1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # nothing half-written


def test_export_refuses_weights_edited_after_quantize(env, tmp_path):
    pruned, calib, _ = env
    res = quantize_model(str(pruned), tmp_path / "q", _opts(calib), device=CPU)
    from safetensors.torch import save_file

    t = _read(res.out / "model.safetensors")
    t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"] * 4
    save_file(t, str(res.out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(QuantSpecError, match="edited after quantize"):
        export_trtllm(res.out, tmp_path / "ckpt", dtype=torch.float16)
    assert not (tmp_path / "ckpt").exists()


def test_cli(env, tmp_path):
    pruned, calib, _ = env
    r = runner.invoke(app, ["quantize", str(pruned), "-o", str(tmp_path / "q"), "--format", "fp8", "--calib", calib,
                            "--nsamples", "4", "--seqlen", "32", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["quant_algo"] == "FP8"
    r = runner.invoke(app, ["eval", str(tmp_path / "q"), "--data", calib, "--seqlen", "32", "--max-windows", "2"])
    assert r.exit_code == 0, r.output
    assert "quantize-dequantized" in r.output and "quality.perplexity_fp8_simulated" in r.output
    r = runner.invoke(app, ["quantize", str(pruned), "-o", str(tmp_path / "x"), "--format", "int4", "--calib", calib])
    assert r.exit_code == 2 and "int4" in r.output
    r = runner.invoke(app, ["quantize", str(tmp_path / "q"), "-o", str(tmp_path / "y"), "--format", "fp8", "--calib", calib])
    assert r.exit_code == 2 and "already quantized" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_report_precision_column_reads_the_build_report():
    from types import SimpleNamespace

    from sparse_trt.bench.report import precision_of

    def run(**kw):
        return SimpleNamespace(**{"backend": "trtllm", "quality": {}, **kw})

    fp8 = run(build_report={"checkpoint": {"precision": "FP8"}}, dtype="float16")
    assert precision_of(fp8) == "FP8"
    assert precision_of(run(build_report=None, dtype="float16")) == "float16"
    assert precision_of(run(build_report={"checkpoint": {}}, dtype=None)) == "?"
    # a quantized folder on the hf backend: its quant_algo, saying the timing ran unquantized weights
    q = {"quantization": {"format": "int8-sq", "quant_algo": "W8A8_SQ_PER_CHANNEL"}}
    assert precision_of(run(backend="hf", build_report=None, dtype="bfloat16", quality=q)) == \
        "W8A8_SQ_PER_CHANNEL (quantization.json; hf ran bfloat16 weights)"
    q = {"quantization": {"format": "fp8", "quant_algo": "FP8", "excluded": ["model.layers.0.mlp.down_proj"] * 2}}
    assert precision_of(run(build_report={"checkpoint": {"precision": "FP8"}}, dtype="float16", quality=q)) == \
        "FP8, 2 linears kept unquantized (--exclude)"


def test_quantize_export_table_agrees_with_the_exporter():
    """quantize (below export) keeps its own list of exportable architectures: it must match the exporter's."""
    from sparse_trt.export.trtllm.families import FAMILIES
    from sparse_trt.quantize.formats import FUSED_GROUPS, QUANT_EXPORT_ARCHITECTURES

    for arch, layout in QUANT_EXPORT_ARCHITECTURES.items():
        family = next(f for f in FAMILIES if arch in f.architectures)
        assert family.name == layout and layout in FUSED_GROUPS


# ------------------------------------------------------------------------------ --exclude


def test_resolve_excludes_globs_plain_names_groups_and_errors():
    from sparse_trt.quantize.exclude import parse_excludes, resolve_excludes

    names = [f"model.layers.{i}.{m}" for i in range(2) for m in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj")]
    group_of = {n: (n,) for n in names}
    for i in range(2):
        qkv = tuple(f"model.layers.{i}.self_attn.{x}_proj" for x in "qkv")
        gu = (f"model.layers.{i}.mlp.gate_proj", f"model.layers.{i}.mlp.up_proj")
        group_of.update({m: qkv for m in qkv} | {m: gu for m in gu})
    down = ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj")
    for pats in (("*mlp.down_proj",), ("mlp.down_proj",), ("down_proj",), ("model.layers.*.mlp.down_proj",)):
        assert resolve_excludes(parse_excludes(pats), names, group_of, "model.layers") == down, pats
    assert resolve_excludes(("model.layers.1.mlp.down_proj",), names, group_of, "model.layers") == down[1:]
    layer0 = resolve_excludes(("model.layers.0.*",), names, group_of, "model.layers")
    assert layer0 == tuple(names[:7])
    assert resolve_excludes(("*self_attn.[qkv]_proj",), names, group_of, "model.layers") == tuple(
        n for n in names if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj"))
    with pytest.raises(InputError, match=r"'\*mlp.down_prj' matches no quantizable linear") as e:
        resolve_excludes(("*mlp.down_prj",), names, group_of, "model.layers")
    assert "mlp.down_proj" in e.value.fix and "model.layers.0.self_attn.q_proj" in e.value.fix
    with pytest.raises(InputError, match="excludes every one of the 14"):
        resolve_excludes(("*",), names, group_of, "model.layers")
    with pytest.raises(InputError, match="one fused GEMM") as e:
        resolve_excludes(("*q_proj",), names, group_of, "model.layers")
    assert "k_proj" in e.value.message and "--exclude '*self_attn.v_proj'" in e.value.fix
    with pytest.raises(InputError, match="empty"):
        parse_excludes(["  "])
    assert parse_excludes([" a ", "a", "b"]) == ("a", "b")


def _trtllm_excluded(module: str, exclude_modules: list[str]) -> bool:
    """TensorRT-LLM 1.2's rule (quantization/quantize.py quantize_layers): fnmatchcase of its module name."""
    import fnmatch

    return any(fnmatch.fnmatchcase(module, p) for p in exclude_modules)


@pytest.mark.parametrize("fmt", ["fp8", "int8-sq"])
def test_exclude_flows_through_calibration_eval_and_export(env, tmp_path, fmt):
    pruned, calib, _ = env
    kv = {"fp8": "fp8", "int8-sq": "int8"}[fmt]
    res = quantize_model(str(pruned), tmp_path / "q", _opts(calib, fmt, kv, exclude=("*mlp.down_proj",)), device=CPU)
    down = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    d = json.loads((res.out / QUANT_NAME).read_text())
    assert d["exclude_modules"] == ["lm_head", *down]
    assert len(d["linears"]) == 2 * 6 and not any("down_proj" in lq["name"] for lq in d["linears"])
    spec = load_quant_spec(res.out)
    assert spec.exclude_modules == ("lm_head", *down)
    assert not any("down_proj" in k for k in spec.tensors)  # no scales computed or stored for them
    assert res.checked_weights == 12 * (3 if fmt == "int8-sq" else 1)  # N:M still checked on every quantized weight

    # eval: excluded linears keep their weights and see unquantized inputs
    loaded = load_model(str(res.out))
    m = loaded.model.model.layers[0]
    down_w, q_w = m.mlp.down_proj.weight.data.clone(), m.self_attn.q_proj.weight.data.clone()
    with simulated_quantization(loaded.model, loaded.adapter, spec) as info:
        assert info.linears == 12 and info.excluded == tuple(down)
        assert torch.equal(m.mlp.down_proj.weight.data, down_w) and not m.mlp.down_proj._forward_pre_hooks
        assert not torch.equal(m.self_attn.q_proj.weight.data, q_w) and m.self_attn.q_proj._forward_pre_hooks

    # export: TensorRT-LLM names in exclude_modules, weights kept in the export dtype, no scales; 2:4 checked
    ckpt = tmp_path / "ckpt"
    r = export_trtllm(res.out, ckpt, dtype=torch.float16, tp=2)
    assert r.checked_weights > 0
    cfg = json.loads((ckpt / "config.json").read_text())
    ex = cfg["quantization"]["exclude_modules"]
    assert ex == ["lm_head", "transformer.layers.0.mlp.proj", "transformer.layers.1.mlp.proj"]
    hf = _read(pruned / "model.safetensors")
    for rank in range(2):
        t = _read(ckpt / f"rank{rank}.safetensors")
        for name, w in t.items():
            if not (name.startswith("transformer.layers.") and name.endswith(".weight")) or "layernorm" in name:
                continue
            module = name[: -len(".weight")]
            if _trtllm_excluded(module, ex):  # what TensorRT-LLM builds unquantized
                assert w.dtype == torch.float16 and f"{module}.weights_scaling_factor" not in t, name
                assert f"{module}.activation_scaling_factor" not in t and f"{module}.prequant_scaling_factor" not in t
            else:
                assert w.dtype == FORMATS[fmt].weight_dtype, name
        src = hf["model.layers.1.mlp.down_proj.weight"]
        half = src.shape[1] // 2
        assert torch.equal(t["transformer.layers.1.mlp.proj.weight"], src[:, rank * half:(rank + 1) * half].half())
        assert nm_violations(t["transformer.layers.1.mlp.proj.weight"], NM(2, 4)) == 0

    # pipeline parallel: the same linears in every stage -> one list of rank-local names
    export_trtllm(res.out, tmp_path / "pp", dtype=torch.float16, pp=2)
    cfg = json.loads((tmp_path / "pp" / "config.json").read_text())
    assert cfg["quantization"]["exclude_modules"] == ["lm_head", "transformer.layers.0.mlp.proj"]
    for rank in range(2):
        t = _read(tmp_path / "pp" / f"rank{rank}.safetensors")
        assert t["transformer.layers.0.mlp.proj.weight"].dtype == torch.float16
        assert t["transformer.layers.0.mlp.fc.weight"].dtype == FORMATS[fmt].weight_dtype


def test_exclude_one_layer_and_pipeline_parallel_refusal(env, tmp_path):
    pruned, calib, _ = env
    res = quantize_model(str(pruned), tmp_path / "q", _opts(calib, "fp8", exclude=("model.layers.0.*",)), device=CPU)
    spec = load_quant_spec(res.out)
    assert len(spec.exclude_modules) == 1 + 7 and all(lq.name.startswith("model.layers.1.") for lq in spec.linears)
    export_trtllm(res.out, tmp_path / "ckpt", dtype=torch.float16)
    ex = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization"]["exclude_modules"]
    assert ex[0] == "lm_head" and sorted(ex[1:]) == [f"transformer.layers.0.{x}" for x in
                                                    ("attention.dense", "attention.qkv", "mlp.fc", "mlp.gate", "mlp.proj")]
    t = _read(tmp_path / "ckpt" / "rank0.safetensors")
    assert t["transformer.layers.0.mlp.fc.weight"].dtype == torch.float16
    assert t["transformer.layers.1.mlp.fc.weight"].dtype == torch.float8_e4m3fn
    # pp 2: rank 1's layer 1 is its local layer 0 too; one list cannot keep layer 0 and quantize layer 1
    with pytest.raises(QuantExportError, match="--pp 2") as e:
        export_trtllm(res.out, tmp_path / "pp", dtype=torch.float16, pp=2)
    assert "--pp 1" in e.value.fix
    assert not (tmp_path / "pp").exists()


def test_exclude_bad_patterns_are_refused_before_calibration(env, tmp_path):
    pruned, calib, _ = env
    with pytest.raises(InputError, match="matches no quantizable linear"):
        quantize_model(str(pruned), tmp_path / "a", _opts(calib, exclude=("*mlp.dwn_proj",)), device=CPU)
    with pytest.raises(InputError, match="nothing would be quantized"):
        quantize_model(str(pruned), tmp_path / "b", _opts(calib, exclude=("model.layers.*",)), device=CPU)
    with pytest.raises(InputError, match="one fused GEMM"):
        quantize_model(str(pruned), tmp_path / "c", _opts(calib, exclude=("*mlp.up_proj",)), device=CPU)
    assert list(tmp_path.iterdir()) == []
    r = runner.invoke(app, ["quantize", str(pruned), "-o", str(tmp_path / "d"), "--format", "fp8", "--calib", calib,
                            "--nsamples", "4", "--seqlen", "32", "--exclude", "*nothing*"])
    assert r.exit_code == 2 and "*nothing*" in r.output and "mlp.down_proj" in r.output
    r = runner.invoke(app, ["quantize", str(pruned), "-o", str(tmp_path / "e"), "--format", "int8-sq", "--calib", calib,
                            "--nsamples", "4", "--seqlen", "32", "--exclude", "*mlp.down_proj", "--exclude",
                            "model.layers.1.self_attn.o_proj", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["exclude_modules"] == ["lm_head", "model.layers.0.mlp.down_proj",
                                                      "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"]
    h = runner.invoke(app, ["quantize", "--help"], terminal_width=200)
    assert "--exclude" in h.output and "lm_head" in h.output


def test_source_without_architectures_takes_the_model_class(env, tmp_path):
    """A .gguf source (transformers builds its config without ``architectures``) or a config.json without
    the field: the family comes from the loaded model's class, as save_pretrained would record it."""
    import shutil

    pruned, calib, _root = env
    bare = tmp_path / "bare"
    shutil.copytree(pruned, bare)
    cfg = json.loads((bare / "config.json").read_text())
    cfg.pop("architectures", None)
    (bare / "config.json").write_text(json.dumps(cfg))
    q = quantize_model(str(bare), tmp_path / "q", _opts(calib), device=CPU)
    assert (q.out / "quantization.json").is_file()
    export_trtllm(q.out, tmp_path / "ckpt", dtype=torch.float16)  # the exporter matches it by model_type
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["quantization"]["quant_algo"] == "FP8"
