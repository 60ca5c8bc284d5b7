"""bench gemm --dtype fp8: parsing, CPU 'not available' rows, the FP8 quantizer, the reference check, shapes.

Everything but the last test runs on CPU: torch._scaled_mm has a CPU kernel (the dense FP8 side), and
torch._cslt_sparse_mm has a meta kernel (shapes and dtypes of the sparse side). The test marked ``gpu``
runs the real probe and a timed pair on a CUDA device.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from sparse_trt.bench.backends.torch_2of4 import (
    FP8_DTYPE,
    FP8_OUT_DTYPE,
    fp8_alpha,
    fp8_dense_mm,
    fp8_padded_tokens,
    fp8_probe,
    fp8_reference,
    fp8_shape_constraints,
    fp8_shape_reason,
    fp8_sparse_mm,
    fp8_static_reason,
    holds_2of4,
    quantize_fp8,
    relative_error,
)
from sparse_trt.bench.gemm_probe import FP8_RTOL, fp8_check, parse_gemm_dtype, random_2of4, run_gemm
from sparse_trt.bench.results import ResultsFile
from sparse_trt.cli.main import app
from sparse_trt.core.errors import InputError

CPU = torch.device("cpu")
runner = CliRunner()


def test_parse_gemm_dtype():
    for name in ("fp8", "FP8", "float8_e4m3fn", " e4m3 "):
        assert parse_gemm_dtype(name) is torch.float8_e4m3fn
    assert parse_gemm_dtype("bf16") is torch.bfloat16 and parse_gemm_dtype("float16") is torch.float16
    for bad in ("int8", "float32", "float8_e5m2", "auto"):
        with pytest.raises(InputError, match="float16, bfloat16 or fp8"):
            parse_gemm_dtype(bad)


def test_cpu_rows_say_why_and_hold_no_numbers():
    assert "need a CUDA GPU (device is cpu)" in fp8_static_reason(CPU)
    mode, why = fp8_probe(CPU)
    assert mode is None and "CUDA GPU" in why
    res = run_gemm([(4096, 4096), (48, 64)], [1, 16], FP8_DTYPE, CPU, source="--shapes", warmup=1, iters=2,
                   kernel="cutlass")
    assert len(res.rows) == 4 and not res.onnx_checks  # torch rows only: no TensorRT or ONNX for FP8
    for r in res.rows:
        assert r.dtype == "float8_e4m3fn" and r.engine == "torch"
        assert r.status.startswith("not available: FP8 2:4 GEMMs") and "device is cpu" in r.status
        assert r.dense_s is None and r.sparse_s is None and r.speedup is None
    notes = " ".join(res.notes)
    assert "TensorRT FP8" in notes and "--kernel cutlass ignored" in notes


def test_cli_fp8_on_cpu(tmp_path):
    out = tmp_path / "g8.json"
    r = runner.invoke(app, ["bench", "gemm", "--shapes", "64x128", "--tokens", "1,4", "--dtype", "fp8",
                            "--device", "cpu", "--iters", "2", "--warmup", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "float8_e4m3fn" in flat and "no GEMM was timed" in flat
    g = ResultsFile.load(out).gemm
    assert [row.dtype for row in g.rows] == ["float8_e4m3fn"] * 2 and all(row.speedup is None for row in g.rows)
    assert json.loads(out.read_text())["gemm"]["rows"][0]["status"].startswith("not available")
    r = runner.invoke(app, ["bench", "gemm", "--shapes", "64x128", "--dtype", "int8", "--device", "cpu",
                            "-o", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "fp8" in r.output and not (tmp_path / "x.json").exists()


def test_quantize_fp8_per_tensor_keeps_2of4():
    w = random_2of4((64, 128), torch.float32, None, seed=1) * 0.02  # small weights: the scale is far below 1
    q, scale = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (1,)
    assert float(scale) == pytest.approx(float(w.abs().max()) / 448.0, rel=1e-6)
    assert float(q.float().abs().max()) == 448.0  # amax maps onto the largest E4M3 value
    assert torch.equal(q.float() == 0, w == 0)  # zeros stay zeros, and nothing else becomes zero here
    assert holds_2of4(q.float()) and holds_2of4(w)
    deq = q.float() * scale
    # E4M3 has 3 mantissa bits: round-to-nearest is within 2^-4 of each value (normal range)
    big = w.abs() > 2 ** -6 * float(scale)
    assert ((deq - w).abs()[big] <= w.abs()[big] * 2 ** -4 + 1e-12).all()
    over = torch.tensor([1.0, -3.0, 0.0, 2.5])
    q2, s2 = quantize_fp8(over)
    assert q2.float().tolist()[1] == -448.0 and q2.float().tolist()[2] == 0.0 and float(s2) == pytest.approx(3 / 448)
    qz, sz = quantize_fp8(torch.zeros(4, 8))  # all zeros: scale 1, no NaN
    assert float(sz) == 1.0 and not qz.float().isnan().any()


def _operands(out_f=64, in_f=128, tokens=5, seed=0):
    w = random_2of4((out_f, in_f), torch.float32, None, seed=seed)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed + 1))
    return quantize_fp8(w), quantize_fp8(x)


def test_reference_and_tolerance_on_cpu_scaled_mm():
    (w_q, sw), (x_q, sx) = _operands()
    ref = fp8_reference(x_q, sx, w_q, sw)
    assert ref.dtype == torch.float64 and ref.shape == (5, 64)
    assert torch.allclose(ref, (x_q.double() * sx.double()) @ (w_q.double() * sw.double()).T)
    dense = fp8_dense_mm(x_q, w_q, sx, sw)  # torch._scaled_mm's CPU kernel: the real dense FP8 call
    assert dense.dtype == FP8_OUT_DTYPE and dense.shape == (5, 64)
    assert relative_error(dense, ref) < 2 ** -7  # bfloat16 rounding of the output only
    exact = ref.to(FP8_OUT_DTYPE)
    de, se, why = fp8_check(dense, exact, ref)
    assert why is None and de < FP8_RTOL and se < FP8_RTOL
    wrong = fp8_dense_mm(x_q, w_q.flip(0).contiguous(), sx, sw)  # rows in the wrong order (a metadata mix-up)
    de, se, why = fp8_check(dense, wrong, ref)
    assert why is not None and "sparse cuSPARSELt off by" in why and "dense torch._scaled_mm off by" not in why
    assert se > FP8_RTOL and f"tolerance {FP8_RTOL}" in why
    nan = exact.clone()
    nan[0, 0] = float("nan")
    assert fp8_check(nan, exact, ref)[2].startswith("correctness check failed: dense torch._scaled_mm off by inf")
    assert relative_error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0


def test_alpha_modes():
    sx, sw = torch.tensor([0.5]), torch.tensor([0.25])
    v = fp8_alpha(sx, sw, 96, "vector")
    assert v.shape == (96,) and v.dtype == torch.float32 and v.is_contiguous() and (v == 0.125).all()
    s = fp8_alpha(sx, sw, 96, "scalar")
    assert s.shape == (1,) and float(s) == 0.125
    with pytest.raises(ValueError):
        fp8_alpha(sx, sw, 96, "row")


def test_sparse_call_matches_torch_meta_kernel():
    """fp8_sparse_mm's positional call against torch's registered meta kernel for _cslt_sparse_mm."""
    meta = torch.device("meta")
    out_f, in_f, tokens = 96, 128, 5
    tp = fp8_padded_tokens(tokens)
    packed = torch.empty(out_f, in_f // 2 + in_f // 8, dtype=FP8_DTYPE, device=meta)  # [out, *] like _cslt_compress
    xp = torch.empty(tp, in_f, dtype=FP8_DTYPE, device=meta)
    y = fp8_sparse_mm(packed, xp, torch.empty(out_f, device=meta), tokens)
    assert y.shape == (tokens, out_f) and y.dtype == FP8_OUT_DTYPE


def test_shape_constraints_from_torch():
    cons = fp8_shape_constraints()
    assert (cons.sparse_min_rows, cons.sparse_min_cols, cons.dense_min_rows) == (32, 32, 16)  # torch 2.13's table
    for ok in [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (32, 32)]:
        assert fp8_shape_reason(*ok) is None, ok
    assert "out_features 48 is not a multiple of 32" in fp8_shape_reason(48, 64)
    assert "in_features 80 is not a multiple of 32" in fp8_shape_reason(64, 80)
    assert "out_features 16" in fp8_shape_reason(16, 32)  # below the minimum
    assert fp8_shape_reason(40, 36).count(";") >= 2  # every problem named
    assert [fp8_padded_tokens(t) for t in (1, 15, 16, 17, 512, 2048)] == [16, 16, 16, 32, 512, 2048]


def test_unsupported_shape_rows_on_cpu_still_say_cuda_first():
    res = run_gemm([(48, 64)], [1], FP8_DTYPE, CPU, source="--shapes", warmup=0, iters=1)
    assert "CUDA GPU" in res.rows[0].status  # the device reason comes first, as for float16


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_fp8_probe_and_rows_on_gpu():
    dev = torch.device("cuda", 0)
    mode, why = fp8_probe(dev)
    static = fp8_static_reason(dev)
    res = run_gemm([(256, 256), (48, 64)], [1, 64], FP8_DTYPE, dev, source="t", warmup=2, iters=5)
    print(f"fp8 probe on {torch.cuda.get_device_name(dev)}: mode={mode} ({why})")
    if mode is None:  # an explained n/a, never a failure
        assert why and all(r.status.startswith("not available") and why in r.status for r in res.rows)
        if static is None:
            pytest.skip(f"FP8 cuSPARSELt does not run on this card/torch: {why}")
        return
    ok = [r for r in res.rows if r.shape == [256, 256]]
    for r in ok:
        assert r.status == "ok", r.status
        assert r.speedup and r.speedup > 0 and r.dense_s.n == 5 and "rel. error" in r.sparse_kind
    assert all("not a multiple of 32" in r.status for r in res.rows if r.shape == [48, 64])
