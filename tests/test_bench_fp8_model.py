"""FP8-quantized folders run as FP8 GEMMs in the hf and torch-2of4 backends (bench/backends/fp8_linear.py).

On CPU the dense FP8 GEMM is real: torch._scaled_mm has a CPU kernel. cuSPARSELt (FP8 2:4) is CUDA only: the
test marked ``gpu`` runs torch-2of4 with fp8=on on a CUDA device.
"""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from sparse_trt.bench.backends.base import BackendSpec, GenerationRequest, create_backend
from sparse_trt.bench.backends.fp8_linear import (
    Fp8Linear,
    apply_fp8,
    decide_fp8,
    dense_fp8_reason,
    quantize_activation,
    simulated_output,
)
from sparse_trt.bench.backends.torch_2of4 import holds_2of4, relative_error
from sparse_trt.bench.errors import CorrectnessError
from sparse_trt.bench.precision import (
    MixedPrecisionError,
    check_same_precision,
    declared_precision,
    fp8_option_off,
    side_perplexity,
)
from sparse_trt.bench.report import precision_key, precision_of
from sparse_trt.bench.results import ResultsFile
from sparse_trt.cli.main import app
from sparse_trt.core.errors import DeviceError, InputError
from sparse_trt.eval.simquant import dequantized_weight, simulated_quantization
from sparse_trt.models.loading import load_model
from sparse_trt.quantize import load_quant_spec
from sparse_trt.quantize import scales as sc

CPU = torch.device("cpu")
EXCLUDED = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def fp8_folders(tmp_path_factory):
    """The tiny LLaMA magnitude-2:4-pruned, and FP8-quantized (one down_proj excluded): all the gpu test needs."""
    import tiny
    from test_export_support import pruned_tiny

    from sparse_trt.data.text import parse_source
    from sparse_trt.quantize.api import QuantizeOptions, quantize_model
    from sparse_trt.quantize.formats import parse_format

    root = tmp_path_factory.mktemp("fp8model")
    calib = root / "calib.txt"
    calib.write_text(tiny.corpus_text(6000, 3))
    pruned = pruned_tiny("llama", root / "pruned")
    src = parse_source(str(calib))
    fp8 = quantize_model(str(pruned), root / "fp8", QuantizeOptions(parse_format("fp8"), None, src, nsamples=4, seqlen=32,
                                                                     exclude=(f"*{EXCLUDED}",)), device=CPU).out
    return {"pruned": pruned, "fp8": fp8, "calib": src, "root": root}


@pytest.fixture(scope="module")
def folders(fp8_folders, tiny_dirs):
    """Those, the dense tiny LLaMA, and the pruned one INT8-SQ-quantized."""
    from sparse_trt.quantize.api import QuantizeOptions, quantize_model
    from sparse_trt.quantize.formats import parse_format

    f = fp8_folders
    int8 = quantize_model(str(f["pruned"]), f["root"] / "int8", QuantizeOptions(parse_format("int8-sq"), None, f["calib"],
                                                                                nsamples=4, seqlen=32), device=CPU).out
    return {"dense": tiny_dirs("llama"), "pruned": f["pruned"], "fp8": f["fp8"], "int8": int8}


def _hf(folder, **opts):
    b = create_backend("hf", BackendSpec(str(folder), CPU, options={k: str(v) for k, v in opts.items()}))
    b.load()
    return b


def test_cpu_scaled_mm_is_available():
    assert dense_fp8_reason(CPU) is None  # torch 2.13's CPU kernel: the dense FP8 GEMM really runs here


def test_hf_runs_the_fp8_folder_as_fp8_gemms_equal_to_simulated(folders):
    spec = load_quant_spec(folders["fp8"])
    b = _hf(folders["fp8"])  # fp8=auto
    info = b.info()["fp8"]
    assert info["applied"] and info["mode"] == "auto" and info["format"] == "fp8"
    assert info["fp8_dense"] == 13 and info["fp8_2of4"] == 0 and info["not_quantized"] == 1  # 14 linears, 1 excluded
    assert "KV cache not quantized" in info["kv_cache"] and info["max_rel_err"] < 0.02
    model = b.model
    stored = load_model(str(folders["fp8"]), with_tokenizer=False)
    names = {lq.name for lq in spec.linears}
    for name, mod in model.named_modules():
        if name in names:
            assert isinstance(mod, Fp8Linear) and not mod.sparse
            w = stored.model.get_submodule(name).weight.data
            # the same FP8 weight as the simulated quantization / the export: bit for bit, and 2:4 zeros kept
            assert mod.weight_q.dtype == torch.float8_e4m3fn
            assert torch.equal(mod.weight_q.float() * mod.weight_scale, dequantized_weight(spec, name, w))
            assert torch.equal(mod.weight_q.float() == 0, w == 0) and holds_2of4(mod.weight_q.float())
            assert float(mod.input_scale) == spec.linear(name).input_scale
    # excluded linears (quantize --exclude, lm_head) stay the stored nn.Linear, untouched
    for name in (EXCLUDED, "lm_head"):
        mod = model.get_submodule(name)
        assert type(mod) is nn.Linear and torch.equal(mod.weight, stored.model.get_submodule(name).weight)
    # the whole model: logits of the FP8 GEMMs against the simulated quantization of the same folder
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got = model(input_ids=ids).logits
        with simulated_quantization(stored.model, stored.adapter, spec):
            ref = stored.model(input_ids=ids).logits
    assert relative_error(got, ref) < 0.03  # bfloat16 GEMM outputs vs float32 simulation
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    out = b.generate(GenerationRequest([[1, 5, 6, 7]], 3))
    assert out[0].output_tokens == 3
    q = b.quality()[1]["quantization"]
    assert q["compute"] == "fp8" and q["fp8_gemms"] == {"dense": 13, "2of4": 0, "kept": 0}
    assert "FP8 GEMMs: 13 linears FP8 dense" in b.sparse_kernels().detail and not b.sparse_kernels().active


def test_fp8_linear_bias_shapes_and_padding_free_dense():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 40, generator=g)
    bias = torch.randn(48, generator=g)
    ws = sc.scale_from_amax(sc.tensor_amax(w), 448.0).reshape(1)
    xs = torch.tensor([0.01])
    lin = Fp8Linear(sc.quantize_per_tensor(w, ws, torch.float8_e4m3fn), ws, xs, bias, torch.float32)
    x = torch.randn(2, 3, 40, generator=g) * 2
    y = lin(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.float32
    xq = quantize_activation(x.reshape(-1, 40), xs)
    assert float(xq.float().abs().max()) == 448.0  # saturated at the static scale, as TensorRT-LLM's FP8 does
    ref = (xq.double() * 0.01) @ (sc.quantize_per_tensor(w, ws, torch.float8_e4m3fn).double() * ws.double()).t()
    assert relative_error(y.reshape(-1, 48), ref + bias.double()) < 2 ** -7


def test_sparse_fp8_linear_pads_rows_for_cusparselt(monkeypatch):
    """The 2:4 variant's plumbing (row padding, the [out, padded] result viewed back, bias, leading dims) on
    torch's meta kernel of _cslt_sparse_mm; only the compression (CUDA only, no meta kernel) is stood in for by an
    empty tensor of the packed shape. The numbers themselves are checked by the gpu test."""
    import sparse_trt.bench.backends.fp8_linear as fl

    meta = torch.device("meta")
    seen = {}

    def packed_like(w_q):
        seen["w"] = w_q.shape
        return torch.empty(w_q.shape[0], w_q.shape[1] // 2 + w_q.shape[1] // 8, dtype=w_q.dtype, device=meta)

    real_mm = fl.fp8_sparse_mm

    def spy(packed, xp, alpha, tokens):
        seen["rows"], seen["tokens"] = xp.shape[0], tokens
        return real_mm(packed, xp, alpha, tokens)

    monkeypatch.setattr(fl, "fp8_compress", packed_like)
    monkeypatch.setattr(fl, "fp8_sparse_mm", spy)
    w = torch.empty(96, 128, dtype=torch.float8_e4m3fn, device=meta)
    lin = Fp8Linear(w, torch.ones(1, device=meta), torch.ones(1, device=meta),
                    torch.empty(96, device=meta, dtype=torch.float16), torch.float16, "vector")
    assert lin.sparse and lin.alpha.shape == (96,) and lin.weight_q is None and "2:4" in lin.kind
    y = lin(torch.empty(2, 3, 128, device=meta, dtype=torch.float16))
    assert y.shape == (2, 3, 96) and y.dtype == torch.float16
    assert seen == {"w": (96, 128), "rows": 16, "tokens": 6}  # 6 rows padded to float8's minimum of 16


def test_check_against_the_simulated_reference_refuses_a_mismatch(folders):
    spec = load_quant_spec(folders["fp8"])
    decision = decide_fp8("on", str(folders["fp8"]), CPU, "hf", sparse=False)
    assert decision.apply and decision.alpha_mode is None
    stored = load_model(str(folders["fp8"]), with_tokenizer=False)
    with pytest.raises(CorrectnessError, match="differs from the simulated FP8 reference"):
        apply_fp8(stored.model, stored.adapter, decision, rtol=1e-9, rows=4)  # bfloat16 output cannot be that close
    lin = stored.model.model.layers[0].mlp.up_proj
    x = torch.randn(4, 64)
    ref = simulated_output(spec, "model.layers.0.mlp.up_proj", lin.weight, None, x)
    assert ref.dtype == torch.float64 and ref.shape == (4, 128)


def test_options_and_refusals(folders):
    with pytest.raises(InputError, match="fp8 must be one of auto, on, off"):
        create_backend("hf", BackendSpec(str(folders["fp8"]), CPU, options={"fp8": "maybe"}))
    with pytest.raises(InputError, match="fp8_rtol"):
        create_backend("hf", BackendSpec(str(folders["fp8"]), CPU, options={"fp8_rtol": "0"}))
    # fp8=on: refused before loading when the folder is not FP8-quantized
    with pytest.raises(InputError, match="has no quantization.json") as e:
        create_backend("hf", BackendSpec(str(folders["pruned"]), CPU, options={"fp8": "on"}))
    assert "--format fp8" in e.value.fix
    with pytest.raises(InputError, match="quantized as int8-sq") as e:
        create_backend("hf", BackendSpec(str(folders["int8"]), CPU, options={"fp8": "on"}))
    assert "fp8=off" in e.value.fix
    # torch-2of4 is CUDA only; FP8 2:4 needs cuSPARSELt on a GPU: both refusals name the device
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        create_backend("torch-2of4", BackendSpec(str(folders["fp8"]), CPU, options={"fp8": "on"}))
    with pytest.raises(DeviceError, match="FP8 GEMMs cannot run here") as e:
        decide_fp8("on", str(folders["fp8"]), CPU, "torch-2of4", sparse=True)
    assert "CUDA GPU" in str(e.value) and "8.9" in e.value.fix
    auto = decide_fp8("auto", str(folders["fp8"]), CPU, "torch-2of4", sparse=True)
    assert not auto.apply and "CUDA GPU" in auto.reason and "as stored" in auto.reason
    # auto on a plain or int8-sq folder: runs as stored, saying why
    b = _hf(folders["int8"])
    assert all(type(m) is not Fp8Linear for m in b.model.modules())
    assert not b.info()["fp8"]["applied"] and "int8-sq" in b.info()["fp8"]["reason"]
    assert "compute" not in b.quality()[1]["quantization"]  # INT8-SQ keeps its quant_algo precision, as before
    assert not _hf(folders["pruned"]).info()["fp8"]["applied"]


def _run(b, label="s"):
    from types import SimpleNamespace

    return SimpleNamespace(backend=b.name, dtype=b.dtype_name(), build_report=None, quality=b.quality()[1], label=label)


def test_precision_follows_what_ran(folders):
    fp8, dense = str(folders["fp8"]), str(folders["dense"])
    # declared (files only): FP8 unless fp8=off, which runs the folder as stored
    assert declared_precision("hf", fp8, None, {}).key == "FP8"
    assert declared_precision("torch-2of4", fp8, None, {"fp8": "auto"}).key == "FP8"
    off = declared_precision("hf", fp8, None, {"fp8": "off"})
    assert off.key == "float32" and "not applied (--opt fp8=off)" in off.source
    assert declared_precision("hf", fp8, torch.float16, {"fp8": "off"}).key == "float16"
    assert not fp8_option_off("trtllm", {"fp8": "off"}) and fp8_option_off("torch-2of4", {"fp8": " OFF"})
    assert declared_precision("hf", str(folders["int8"]), None, {"fp8": "off"}).key == "W8A8_SQ_PER_CHANNEL"
    d = declared_precision("hf", dense, None, {})
    assert check_same_precision(d, off, ("d", "s"), allow_mixed=False) is None  # float32 vs float32: like with like
    with pytest.raises(MixedPrecisionError):
        check_same_precision(d, declared_precision("hf", fp8, None, {}), ("d", "s"), allow_mixed=False)
    with pytest.raises(MixedPrecisionError, match="is float32") as e:  # FP8 dense vs the FP8 2:4 folder run as stored
        check_same_precision(declared_precision("hf", fp8, None, {}), off, ("d", "s"), allow_mixed=False)
    assert "drop --opt fp8=off on 's'" in e.value.fix
    # recorded: the report's precision column says what ran
    on = _run(_hf(fp8))
    assert precision_key(on) == "FP8"
    assert precision_of(on) == ("FP8, 1 linears kept unquantized (--exclude) (quantization.json; hf ran FP8 GEMMs: "
                                "13 dense, 0 2:4; KV cache not quantized)")
    stored = _run(_hf(fp8, fp8="off"))
    assert stored.quality["quantization"]["compute"] == "stored"
    assert precision_key(stored) == "float32"
    assert precision_of(stored) == ("float32 (FP8 quantization.json not applied: --opt fp8=off: quantization.json "
                                    "not applied, weights run as stored)")
    # its perplexity is the unquantized figure, not the simulated FP8 one
    q = {**stored.quality, "perplexity": 10.0, "perplexity_fp8_simulated": 11.0}
    sp = side_perplexity(q, precision_key(stored), lambda qual, key="perplexity": qual.get(key))
    assert sp.value == 10.0 and sp.label == ""
    q = {**on.quality, "perplexity": 10.0, "perplexity_fp8_simulated": 11.0}
    sp = side_perplexity(q, precision_key(on), lambda qual, key="perplexity": qual.get(key))
    assert sp.value == 11.0 and sp.label == "fp8 simulated"


def test_bench_run_end_to_end_on_cpu(folders, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["bench", "run", str(folders["fp8"]), "-o", str(out), "--opt", "fp8=on",
                                 "--batch-sizes", "1", "--input-lens", "8", "--output-lens", "3", "--warmup", "1",
                                 "--requests", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    run = ResultsFile.load(out).runs[0]
    assert run.backend_info["fp8"]["applied"] and run.backend_info["fp8"]["fp8_dense"] == 13
    assert run.quality["quantization"]["compute"] == "fp8"
    assert run.status == "complete" and run.points[0].requests == 2 and run.points[0].output_tokens == 2 * 3
    assert json.loads(out.read_text())["runs"][0]["backend_info"]["fp8"]["mode"] == "on"
    assert "hf ran FP8 GEMMs" in precision_of(run)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_torch_2of4_fp8_on_cuda(fp8_folders):
    from sparse_trt.bench.backends.torch_2of4 import fp8_probe

    dev = torch.device("cuda", 0)
    mode, why = fp8_probe(dev)
    if mode is None:
        pytest.skip(f"FP8 cuSPARSELt does not run on this card/torch: {why}")
    b = create_backend("torch-2of4", BackendSpec(str(fp8_folders["fp8"]), dev, torch.bfloat16, {"fp8": "on"}))
    b.load()
    info = b.info()["fp8"]
    print(f"torch-2of4 fp8 on {torch.cuda.get_device_name(dev)}: {info}")
    assert info["applied"] and info["fp8_2of4"] == 13 and info["fp8_dense"] == 0 and info["max_rel_err"] < 0.02
    sk = b.sparse_kernels()
    assert sk.active and "cuSPARSELt FP8 2:4 (13 linears)" in sk.kind and sk.eligible_layers == 14
    assert sk.sparse_layers == 13 + len(b._converted)  # the excluded 2:4 linear: 16-bit 2:4 kernels, or kept dense
    assert set(b._converted) | set(b._kept_dense) == {EXCLUDED}
    assert all(isinstance(b.model.get_submodule(n), Fp8Linear) and b.model.get_submodule(n).sparse
               for n in (lq.name for lq in load_quant_spec(fp8_folders["fp8"]).linears))
    for bs, n_in in ((1, 8), (3, 20)):  # decode rows padded to cuSPARSELt's minimum
        t = b.generate(GenerationRequest([[5] * n_in] * bs, 4))
        assert len(t) == bs and t[0].output_tokens == 4
    b.close()
