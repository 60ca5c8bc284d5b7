"""Dense vs 2:4 GEMM timings for every distinct linear shape of a model (or explicit shapes).

torch: ``F.linear`` with a dense weight vs the same weight as a semi-structured sparse tensor, timed
with CUDA events after warm-up, outputs checked against each other; the kernel backend (cuSPARSELt or
CUTLASS) is chosen for the GPU as the torch-2of4 backend does. TensorRT (when installed): the same
weight in a one-layer ONNX graph, built once without and once with sparse weights allowed, one pair of
engines per token count (the profile's min = opt = max = that count, so TensorRT times its tactics at
exactly the measured shape). The engines run on a side stream and are timed with events recorded on
that same stream. TensorRT's INFO log of each sparse build is captured and its ``(Sparsity)`` lines
parsed, so a row says "sparse tactic not picked" when TensorRT chose dense, instead of "dense wins".
Where a path cannot run (CPU, old GPU, no TensorRT) the rows say "not available: why" and hold no
numbers. On any device the ONNX graphs are checked (onnx.checker + ONNX Runtime vs torch).

FP8 (``--dtype fp8``): dense ``torch._scaled_mm`` vs cuSPARSELt's ``torch._cslt_sparse_mm`` on the same
float8_e4m3fn operands (one scale per tensor; cuSPARSELt gets the scale product as alpha), bfloat16 outputs.
Each pair is first checked against the exact product of the dequantized operands; a pair outside the
tolerance is an n/a row with the errors, never a speed figure. TensorRT and ONNX checks are not run for FP8.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

from sparse_trt.core.deps import available, require
from sparse_trt.core.errors import DeviceError, InputError

from .results import GemmResult, GemmRow, OnnxCheck
from .synth import mask_2of4_
from .timing import Summary, time_callable_events

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # (out_features, in_features)


def parse_shapes(text: str) -> list[Shape]:
    """'4096x4096,11008x4096' -> [(4096, 4096), (11008, 4096)]; OUTxIN as nn.Linear stores the weight."""
    out: list[Shape] = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        m = re.fullmatch(r"(\d+)\s*[xX×]\s*(\d+)", item)
        if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
            raise InputError(f"shape '{item}' is not OUTxIN", fix="e.g. --shapes 4096x4096,11008x4096")
        s = (int(m.group(1)), int(m.group(2)))
        if s[1] % 4:
            raise InputError(f"shape '{item}': in_features {s[1]} is not a multiple of 4, so no 2:4 pattern exists")
        if s not in out:
            out.append(s)
    if not out:
        raise InputError("no shapes given", fix="e.g. --shapes 4096x4096,11008x4096")
    return out


#: names ``bench gemm --dtype`` takes for FP8 (E4M3)
FP8_NAMES = ("fp8", "float8_e4m3fn", "e4m3")
#: the 16-bit dtypes of the torch semi-structured probes
HALF_NAMES = ("float16", "fp16", "half", "bfloat16", "bf16")


def parse_gemm_dtype(text: str) -> torch.dtype:
    """``--dtype`` of ``bench gemm``: float16 / bfloat16 (and their short names), or fp8 / float8_e4m3fn."""
    from sparse_trt.core.device import DTYPE_NAMES

    from .backends.torch_2of4 import FP8_DTYPE

    key = text.strip().lower()
    if key in FP8_NAMES and FP8_DTYPE is not None:
        return FP8_DTYPE
    if key in HALF_NAMES:
        return DTYPE_NAMES[key]
    raise InputError(f"--dtype {text}: 2:4 GEMM probes run float16, bfloat16 or fp8 (float8_e4m3fn)",
                     fix="use --dtype float16, bfloat16 or fp8")


def model_shapes(spec: str, trust_remote_code: bool = False) -> list[Shape]:
    """Distinct [out, in] shapes of the model's prunable linears (built on the meta device: no weights read)."""
    from transformers import AutoModelForCausalLM

    from sparse_trt.models.adapters import adapter_for, all_targets
    from sparse_trt.models.loading import load_config, resolve_source

    cfg = load_config(resolve_source(spec), trust_remote_code)
    adapter = adapter_for(getattr(cfg, "model_type", "?"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    shapes: list[Shape] = []
    for t in all_targets(model, adapter):
        w = t.weight_out_in()
        s = (int(w.shape[0]), int(w.shape[1]))
        if s not in shapes:
            shapes.append(s)
    return shapes


def random_2of4(shape: Shape, dtype: torch.dtype, device: torch.device | None, seed: int) -> torch.Tensor:
    """A seeded random [out, in] weight, magnitude-masked to 2:4; on ``device`` (None: host memory)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
    mask_2of4_(w)
    return w if device is None else w.to(device)


def torch_unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"not available: torch semi-structured 2:4 kernels need a CUDA GPU (device is {device})"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"not available: compute capability {major}.{minor} < 8.0 has no 2:4 sparse tensor cores"
    return None


def _na_rows(shapes: list[Shape], tokens: list[int], dtype: torch.dtype, engine: str, reason: str) -> list[GemmRow]:
    dn = str(dtype).removeprefix("torch.")
    return [GemmRow([o, i], t, dn, engine, reason) for (o, i) in shapes for t in tokens]


def probe_torch(shapes: list[Shape], tokens: list[int], dtype: torch.dtype, device: torch.device, *,
                warmup: int, iters: int, seed: int = 0, kernel: str = "auto",
                progress: Callable[[int, int], None] | None = None) -> list[GemmRow]:
    reason = torch_unavailable_reason(device)
    if reason is not None:
        return _na_rows(shapes, tokens, dtype, "torch", reason)
    from torch.sparse import to_sparse_semi_structured

    from .backends.torch_2of4 import semi_structured_class, shape_ok

    try:
        cls, kind, _why = semi_structured_class(kernel, device)
    except DeviceError as e:  # e.g. --kernel cutlass on sm90, or no cuSPARSELt where it is the only option
        return _na_rows(shapes, tokens, dtype, "torch", f"not available: {e.message}")
    dn = str(dtype).removeprefix("torch.")
    rows: list[GemmRow] = []
    n = 0
    for si, (o, i) in enumerate(shapes):
        if not shape_ok(cls, dtype, o, i):
            rows += _na_rows([(o, i)], tokens, dtype, "torch", f"not available: {kind} does not support {o}x{i} in {dn}")
            continue
        w = random_2of4((o, i), dtype, device, seed + si)
        ws = to_sparse_semi_structured(w)
        for t in tokens:
            x = torch.randn(t, i, dtype=dtype, device=device)
            ref = F.linear(x, w)
            err = float((F.linear(x, ws).float() - ref.float()).abs().max())
            d = time_callable_events(lambda x=x, w=w: F.linear(x, w), device, warmup, iters)
            s = time_callable_events(lambda x=x, ws=ws: F.linear(x, ws), device, warmup, iters)
            ds, ss = Summary.of(d), Summary.of(s)
            rows.append(GemmRow([o, i], t, dn, "torch", "ok", ds, ss, ds.p50 / ss.p50 if ss.p50 > 0 else None, err,
                                f"torch semi-structured ({kind})"))
            n += 1
            if progress:
                progress(n, len(shapes) * len(tokens))
    return rows


#: FP8 outputs (bfloat16) must lie within this fraction of max |reference| of the exact dequantized product
FP8_RTOL = 0.02


def fp8_check(dense: torch.Tensor, sparse: torch.Tensor, ref: torch.Tensor, rtol: float = FP8_RTOL) -> tuple[float, float, str | None]:
    """(dense rel. error, sparse rel. error, why the pair fails or None) against the float64 reference."""
    from .backends.torch_2of4 import relative_error

    de, se = relative_error(dense, ref), relative_error(sparse, ref)
    bad = [f"{name} off by {e:.3g}" for name, e in (("dense torch._scaled_mm", de), ("sparse cuSPARSELt", se))
           if not e <= rtol]
    why = None if not bad else (f"correctness check failed: {', '.join(bad)} (max |err| / max |reference|, tolerance "
                                f"{rtol}; reference: the dequantized FP8 operands multiplied in float64)")
    return de, se, why


def probe_torch_fp8(shapes: list[Shape], tokens: list[int], device: torch.device, *, warmup: int, iters: int,
                    seed: int = 0, rtol: float = FP8_RTOL,
                    progress: Callable[[int, int], None] | None = None) -> list[GemmRow]:
    """Dense FP8 (torch._scaled_mm, cuBLASLt) vs FP8 2:4 (cuSPARSELt) for each shape and token count.

    Weights: seeded random, 2:4 by magnitude, quantized per tensor; activations: random, quantized per tensor.
    cuSPARSELt runs the activations padded with zero rows up to a multiple of torch's float8 dense_min_rows
    (16), as torch's own semi-structured linear pads them; the dense GEMM runs the exact token count.
    """
    from .backends.torch_2of4 import (
        FP8_DTYPE,
        fp8_alpha,
        fp8_compress,
        fp8_dense_mm,
        fp8_padded_tokens,
        fp8_probe,
        fp8_reference,
        fp8_shape_reason,
        fp8_sparse_mm,
        quantize_fp8,
    )

    dtype = FP8_DTYPE
    mode, why = fp8_probe(device, rtol)
    if mode is None:
        return _na_rows(shapes, tokens, dtype, "torch", f"not available: {why}")
    dn = str(dtype).removeprefix("torch.")
    rows: list[GemmRow] = []
    n = 0
    for si, (o, i) in enumerate(shapes):
        bad = fp8_shape_reason(o, i)
        if bad is not None:
            rows += _na_rows([(o, i)], tokens, dtype, "torch", f"not available: cuSPARSELt FP8 cannot run {o}x{i}: {bad}")
            n += len(tokens)
            continue
        w = random_2of4((o, i), torch.float32, device, seed + si)
        w_q, sw = quantize_fp8(w)
        del w
        try:
            packed = fp8_compress(w_q)
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or ["(no message)"])[0][:300]
            rows += _na_rows([(o, i)], tokens, dtype, "torch", f"not available: _cslt_compress failed: {first}")
            n += len(tokens)
            continue
        for t in tokens:
            tp = fp8_padded_tokens(t)
            x = torch.zeros(tp, i, device=device)
            x[:t] = torch.randn(t, i, device=device)
            xp_q, sx = quantize_fp8(x)  # zero rows quantize to zeros; the scale comes from the real rows
            x_q = xp_q[:t]  # row-major view: what the dense GEMM reads
            alpha = fp8_alpha(sx, sw, o, mode)
            n += 1
            try:
                ref = fp8_reference(x_q, sx, w_q, sw)
                dense_y = fp8_dense_mm(x_q, w_q, sx, sw)
                sparse_y = fp8_sparse_mm(packed, xp_q, alpha, t)
                de, se, fail = fp8_check(dense_y, sparse_y, ref, rtol)
            except RuntimeError as e:  # a kernel that refuses this shape/token count: say so, time nothing
                first = (str(e).strip().splitlines() or ["(no message)"])[0][:300]
                de, se, fail = None, None, f"FP8 GEMM call failed: {type(e).__name__}: {first}"
            if fail is not None:
                rows += _na_rows([(o, i)], [t], dtype, "torch", f"not available: {fail}")
            else:
                err = float((sparse_y.float() - dense_y.float()).abs().max())
                del ref, dense_y, sparse_y
                d = time_callable_events(partial(fp8_dense_mm, x_q, w_q, sx, sw), device, warmup, iters)
                s = time_callable_events(partial(fp8_sparse_mm, packed, xp_q, alpha, t), device, warmup, iters)
                ds, ss = Summary.of(d), Summary.of(s)
                pad = f"; tokens padded {t}->{tp} for cuSPARSELt" if tp != t else ""
                rows.append(GemmRow([o, i], t, dn, "torch", "ok", ds, ss, ds.p50 / ss.p50 if ss.p50 > 0 else None, err,
                                    f"torch FP8: _scaled_mm vs cuSPARSELt (alpha {mode}{pad}); rel. error vs float64 "
                                    f"reference: dense {de:.2g}, sparse {se:.2g} (tol {rtol})"))
            if progress:
                progress(n, len(shapes) * len(tokens))
    return rows


#: GemmRow.sparse_kind of TensorRT rows: what TensorRT did with the sparse-weights build
TRT_PICKED = "TensorRT: sparse tactic picked"
TRT_NOT_PICKED = "TensorRT: sparse tactic not picked (TensorRT chose a dense tactic)"
TRT_NOT_ELIGIBLE = "TensorRT: layer not eligible for sparse math"
TRT_UNKNOWN = "TensorRT: no (Sparsity) lines in the build log (tactic unknown)"


def tactic_status(log_text: str) -> str:
    """What TensorRT's INFO log of one sparse-weights build says about its one GEMM (a TRT_* constant)."""
    from sparse_trt.engine.logparse import parse_build_log

    parsed = parse_build_log(log_text)
    if not parsed.has_sparsity_lines:
        return TRT_UNKNOWN
    if parsed.picked:
        return TRT_PICKED
    return TRT_NOT_PICKED if parsed.eligible else TRT_NOT_ELIGIBLE


def time_on_stream(fn: Callable[[], object], stream: torch.cuda.Stream, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` (which enqueues work on ``stream``), with events recorded on that stream."""
    for _ in range(max(0, warmup)):
        fn()
    stream.synchronize()
    out: list[float] = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        out.append(start.elapsed_time(end) / 1000.0)
    return out


def _capture_logger(trt):
    """A TensorRT logger that keeps INFO-and-worse messages (the builder's (Sparsity) lines are INFO)."""

    class CaptureLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.min_severity = trt.ILogger.Severity.INFO  # read by TensorRT builds that filter before calling log
            self.lines: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: ANN001 - TensorRT's callback signature
            if int(severity) <= int(trt.ILogger.Severity.INFO):
                self.lines.append(str(msg))

    return CaptureLogger()


def probe_tensorrt(shapes: list[Shape], tokens: list[int], dtype: torch.dtype, device: torch.device, *,
                   warmup: int, iters: int, seed: int = 0, workdir: Path | None = None) -> list[GemmRow]:
    """Dense vs sparse-weights-allowed TensorRT engines of one-layer ONNX GEMMs (TensorRT 10 API)."""
    if device.type != "cuda":
        return _na_rows(shapes, tokens, dtype, "tensorrt", f"not available: TensorRT needs a CUDA GPU (device is {device})")
    if not available("tensorrt"):
        return _na_rows(shapes, tokens, dtype, "tensorrt", "not available: TensorRT is not installed (pip install tensorrt, or the TensorRT-LLM container)")
    trt = require("tensorrt", "TensorRT GEMM probes")
    from .onnx_gemm import gemm_graph

    dn = str(dtype).removeprefix("torch.")
    onnx_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    rows: list[GemmRow] = []
    stream = torch.cuda.Stream(device)
    for si, (o, i) in enumerate(shapes):
        w = random_2of4((o, i), dtype, None, seed + si).to(onnx_dtype)  # ONNX needs host (numpy) weights
        model_bytes = gemm_graph(w.numpy()).SerializeToString()
        for t in tokens:
            engines, status, tactic = {}, "ok", TRT_UNKNOWN
            for sparse in (False, True):
                logger = _capture_logger(trt)
                builder = trt.Builder(logger)
                network = builder.create_network(0)
                parser = trt.OnnxParser(network, logger)
                if not parser.parse(model_bytes):
                    errs = "; ".join(str(parser.get_error(k)) for k in range(parser.num_errors))
                    status = f"not available: ONNX parse failed ({errs})"
                    break
                config = builder.create_builder_config()
                config.set_flag(trt.BuilderFlag.FP16 if dtype == torch.float16 else trt.BuilderFlag.BF16)
                if sparse:
                    config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
                prof = builder.create_optimization_profile()
                prof.set_shape("X", (t, i), (t, i), (t, i))  # tactics are timed at exactly this token count
                config.add_optimization_profile(prof)
                blob = builder.build_serialized_network(network, config)
                if blob is None:
                    status = "not available: TensorRT engine build failed"
                    break
                engines[sparse] = trt.Runtime(logger).deserialize_cuda_engine(blob)
                if sparse:
                    tactic = tactic_status("\n".join(logger.lines))
            if status != "ok":
                rows += _na_rows([(o, i)], [t], dtype, "tensorrt", status)
                continue
            x = torch.randn(t, i, dtype=onnx_dtype, device=device)
            stream.wait_stream(torch.cuda.current_stream(device))  # x is written on the current stream
            outs, times = {}, {}
            for sparse, eng in engines.items():
                ctx = eng.create_execution_context()
                ctx.set_input_shape("X", (t, i))
                y = torch.empty(t, o, dtype=onnx_dtype, device=device)
                ctx.set_tensor_address("X", x.data_ptr())
                ctx.set_tensor_address("Y", y.data_ptr())

                def run(ctx=ctx):
                    ctx.execute_async_v3(stream.cuda_stream)

                times[sparse] = time_on_stream(run, stream, warmup, iters)
                outs[sparse] = y
            stream.synchronize()
            err = float((outs[True].float() - outs[False].float()).abs().max())
            ds, ss = Summary.of(times[False]), Summary.of(times[True])
            rows.append(GemmRow([o, i], t, dn, "tensorrt", "ok", ds, ss, ds.p50 / ss.p50 if ss.p50 > 0 else None, err,
                                tactic))
    return rows


def onnx_checks(shapes: list[Shape], dtype: torch.dtype, tokens: int, seed: int = 0,
                max_elements: int | None = None) -> tuple[list[OnnxCheck], list[str]]:
    """ONNX graph checks on CPU for each shape (float16 graphs for float16, float32 otherwise)."""
    from .onnx_gemm import check_gemm_graph

    graph_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    checks, notes = [], []
    for si, (o, i) in enumerate(shapes):
        if max_elements is not None and o * i > max_elements:
            notes.append(f"ONNX check of {o}x{i} skipped (over {max_elements} weights; raise --onnx-max-elements)")
            continue
        w = random_2of4((o, i), graph_dtype, None, seed + si)  # ONNX Runtime check runs on the host
        checks.append(check_gemm_graph(w, tokens, seed))
    if dtype == torch.bfloat16:
        notes.append("ONNX graphs for bfloat16 runs are float32 (numpy has no bfloat16); TensorRT builds them with BF16 allowed")
    return checks, notes


def run_gemm(shapes: list[Shape], tokens: list[int], dtype: torch.dtype, device: torch.device, *, source: str,
             warmup: int, iters: int, seed: int = 0, kernel: str = "auto", onnx: bool = True,
             onnx_max_elements: int | None = None, tensorrt: bool = True,
             progress: Callable[[int, int], None] | None = None) -> GemmResult:
    from .backends.torch_2of4 import FP8_DTYPE

    if FP8_DTYPE is not None and dtype == FP8_DTYPE:
        rows = probe_torch_fp8(shapes, tokens, device, warmup=warmup, iters=iters, seed=seed, progress=progress)
        notes = ["FP8: torch only (dense torch._scaled_mm vs cuSPARSELt 2:4, per-tensor scales, bfloat16 out); "
                 "TensorRT FP8 engines need quantize/dequantize nodes in the ONNX graph and are not probed here, "
                 "and the ONNX graph checks are 16/32-bit only"]
        if kernel not in ("auto", "cusparselt"):
            notes.append(f"--kernel {kernel} ignored: FP8 2:4 runs on cuSPARSELt only (torch's CUTLASS 2:4 kernels "
                         "have no float8)")
        return GemmResult(device=str(device), source=source, rows=rows, notes=notes)
    rows = probe_torch(shapes, tokens, dtype, device, warmup=warmup, iters=iters, seed=seed, kernel=kernel, progress=progress)
    notes: list[str] = []
    if tensorrt:
        rows += probe_tensorrt(shapes, tokens, dtype, device, warmup=warmup, iters=iters, seed=seed)
    checks: list[OnnxCheck] = []
    if onnx:
        if available("onnx") and available("onnxruntime"):
            checks, n2 = onnx_checks(shapes, dtype, min(tokens), seed, onnx_max_elements)
            notes += n2
        else:
            notes.append("ONNX checks skipped: pip install 'sparse_trt[onnx]'")
    return GemmResult(device=str(device), source=source, rows=rows, onnx_checks=checks, notes=notes)


def winners(result: GemmResult) -> list[tuple[GemmRow, str]]:
    """Each timed row with a verdict: 'sparse wins', 'dense wins' or 'tie' (within 3%); for TensorRT rows whose
    sparse build did not use a sparse tactic, 'sparse tactic not picked' (both engines ran dense kernels, so the
    ratio is noise between two dense builds) or 'not eligible for sparse math'."""
    out = []
    for r in result.rows:
        if r.status != "ok" or r.speedup is None:
            continue
        if r.engine == "tensorrt" and r.sparse_kind in (TRT_NOT_PICKED, TRT_NOT_ELIGIBLE):
            verdict = "sparse tactic not picked" if r.sparse_kind == TRT_NOT_PICKED else "not eligible for sparse math"
        else:
            verdict = "sparse wins" if r.speedup > 1.03 else "dense wins" if r.speedup < 0.97 else "tie"
        out.append((r, verdict))
    return out
