"""FP8 (E4M3) linears: run a ``sparse-trt quantize --format fp8`` folder's GEMMs in FP8 in ``hf`` and ``torch-2of4``.

Each linear listed in ``quantization.json`` is replaced by an :class:`Fp8Linear` holding its weight quantized with
the folder's per-tensor weight scale (``W / s_w`` cast to float8_e4m3fn, exactly as the simulated quantization
and the export do); each call quantizes the input with the folder's **static** per-tensor activation scale
(``x / s_x`` saturated at ±448, no amax computed at run time, so no host sync, as TensorRT-LLM's FP8 linears
do) and multiplies:

* ``dense``: ``torch._scaled_mm`` (cuBLASLt on CUDA; torch also has a CPU kernel);
* ``2:4``: cuSPARSELt (``torch._cslt_sparse_mm`` on the compressed FP8 weight, alpha = ``s_x * s_w``), the
  input rows padded to torch's float8 minimum (torch_2of4.py's FP8 building blocks).

Both GEMMs write bfloat16 (FP8_OUT_DTYPE), cast to the model dtype; the bias is added after, in the model dtype.
Linears in ``exclude_modules`` (lm_head, ``quantize --exclude``) and those a kernel cannot take stay as they are.
The KV cache is never quantized here (a ``--kv-cache`` in the folder is recorded as not applied).
INT8 SmoothQuant folders are not run in INT8: they run as stored.

Before timing, every replaced linear is checked on random inputs (uniform within its calibrated input range)
against the simulated reference (eval/simquant.py's quantize-dequantize of the same weight and input, in
float64); a mismatch beyond tolerance raises CorrectnessError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparse_trt.core.errors import DeviceError, InputError
from sparse_trt.eval.simquant import dequantized_weight
from sparse_trt.models.adapters import Adapter, all_targets
from sparse_trt.quantize import FORMATS, QUANT_NAME, QuantSpec, load_quant_spec
from sparse_trt.quantize import scales as sc

from ..errors import CorrectnessError
from .torch_2of4 import (
    FP8_DTYPE,
    FP8_OUT_DTYPE,
    SCALED_MM_MULTIPLE,
    fp8_alpha,
    fp8_compress,
    fp8_dense_mm,
    fp8_padded_tokens,
    fp8_probe,
    fp8_reference,
    fp8_shape_reason,
    fp8_sparse_mm,
    holds_2of4,
    quantize_fp8,
    relative_error,
)

FP8_MODES = ("auto", "on", "off")
FP8_MIN_CAPABILITY = (8, 9)  # torch._scaled_mm FP8 on CUDA: Ada (sm89) / Hopper (sm90) or newer
KV_NOT_APPLIED = "KV cache not quantized (the backend keeps it in the model dtype)"


def check_fp8_mode(mode: str) -> None:
    if mode not in FP8_MODES:
        raise ValueError(f"fp8 must be one of {', '.join(FP8_MODES)}")


def quantize_activation(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` saturated at ±448 and cast to float8_e4m3fn: the static per-tensor quantization of an input
    (the same operations as quantize/scales.py's fake_quant, without the dequantize)."""
    qmax = FORMATS["fp8"].qmax
    return (x.float() / scale).clamp(-qmax, qmax).to(FP8_DTYPE)


class Fp8Linear(nn.Module):
    """One quantized ``nn.Linear`` computed in FP8: dense (torch._scaled_mm) or 2:4 (cuSPARSELt, ``alpha`` given)."""

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype, alpha_mode: str | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_q.shape
        self.out_dtype = out_dtype
        self.sparse = alpha_mode is not None
        self.register_buffer("weight_scale", weight_scale.float().reshape(1))
        self.register_buffer("input_scale", input_scale.float().reshape(1).to(weight_scale.device))
        self.register_buffer("bias", None if bias is None else bias.detach())
        if self.sparse:
            self.register_buffer("packed", fp8_compress(weight_q))
            self.register_buffer("alpha", fp8_alpha(self.input_scale, self.weight_scale, self.out_features, alpha_mode))
            self.weight_q = None
        else:
            self.register_buffer("weight_q", weight_q.contiguous())

    @property
    def kind(self) -> str:
        return "FP8 2:4 (cuSPARSELt)" if self.sparse else "FP8 dense (torch._scaled_mm)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        tokens = x2.shape[0]
        if self.sparse:
            pad = fp8_padded_tokens(tokens) - tokens
            xq = quantize_activation(F.pad(x2, (0, 0, 0, pad)) if pad else x2, self.input_scale)
            y = fp8_sparse_mm(self.packed, xq, self.alpha, tokens)
        else:
            y = fp8_dense_mm(quantize_activation(x2, self.input_scale), self.weight_q, self.input_scale, self.weight_scale)
        y = y.to(self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"


# ----------------------------------------------------------------------------------- can FP8 GEMMs run here?
def dense_fp8_reason(device: torch.device) -> str | None:
    """Why torch._scaled_mm cannot run FP8 on ``device`` (None: it can), from one tiny call checked against the
    exact product. CPU counts: torch has a CPU kernel for it."""
    if FP8_DTYPE is None or not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no float8_e4m3fn / torch._scaled_mm"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < FP8_MIN_CAPABILITY:
            return (f"compute capability {major}.{minor} < 8.9 has no FP8 tensor cores for torch._scaled_mm "
                    "(Ada sm89 / Hopper sm90 or newer)")
    g = torch.Generator().manual_seed(0)
    try:
        w_q, sw = (t.to(device) for t in quantize_fp8(torch.randn(32, 32, generator=g)))
        x_q, sx = (t.to(device) for t in quantize_fp8(torch.randn(16, 32, generator=g)))
        err = relative_error(fp8_dense_mm(x_q, w_q, sx, sw), fp8_reference(x_q, sx, w_q, sw))
    except Exception as e:  # noqa: BLE001 - any failure of the probe call is the reason FP8 cannot run here
        text = str(e).strip().splitlines()
        return f"torch._scaled_mm FP8 probe failed on {device}: {type(e).__name__}: {text[0][:300] if text else ''}"
    if not err <= 0.02:
        return f"torch._scaled_mm FP8 probe result off by {err:.3g} (relative) on {device}"
    return None


def dense_shape_reason(out_f: int, in_f: int, device: torch.device) -> str | None:
    """torch._scaled_mm on CUDA needs both dimensions multiples of 16 (the CPU kernel takes any shape)."""
    if device.type == "cuda" and (out_f % SCALED_MM_MULTIPLE or in_f % SCALED_MM_MULTIPLE):
        return f"shape {out_f}x{in_f}: torch._scaled_mm needs both dimensions to be multiples of {SCALED_MM_MULTIPLE}"
    return None


@dataclass(frozen=True)
class Fp8Decision:
    """Whether a run applies the folder's FP8 quantization, and why (or why not)."""

    mode: str  # the option: auto | on | off
    spec: QuantSpec | None  # the folder's quantization (None: not quantized / unreadable as a folder)
    apply: bool
    reason: str
    alpha_mode: str | None = None  # cuSPARSELt alpha for FP8 2:4 (torch-2of4), None for dense only


def _fix_off(backend: str) -> str:
    return f"drop --opt fp8=on (or pass fp8=off) to run the folder's weights as stored on {backend}"


def fp8_folder(mode: str, model: str, backend: str) -> tuple[QuantSpec | None, str | None]:
    """(the folder's quantization, why it will not run in FP8 or None): files only, so backends call it in
    ``__init__``. With ``mode == "on"`` a folder that is not FP8-quantized is refused."""
    check_fp8_mode(mode)
    folder = Path(model).expanduser()
    spec = load_quant_spec(folder) if folder.is_dir() else None
    if mode == "off":
        return spec, "--opt fp8=off: quantization.json not applied, weights run as stored"
    if spec is None:
        if mode == "on":
            raise InputError(f"--opt fp8=on but '{model}' has no {QUANT_NAME}: it is not FP8-quantized",
                             fix=f"quantize it first (`sparse-trt quantize MODEL -o OUT --format fp8`), or "
                             f"{_fix_off(backend)}")
        return None, f"not quantized (no {QUANT_NAME})"
    if spec.format != "fp8":
        why = (f"'{model}' is quantized as {spec.format} ({spec.quant_algo}); {backend} runs only FP8 folders "
               "in FP8, other formats as stored (weights unquantized)")
        if mode == "on":
            raise InputError(f"--opt fp8=on: {why}",
                             fix=f"quantize with --format fp8 for FP8 GEMMs, or {_fix_off(backend)}; for INT8 GEMMs "
                             "build an engine (export trtllm + build) and bench it with --backend trtllm")
        return spec, why
    return spec, None


def decide_fp8(mode: str, model: str, device: torch.device, backend: str, sparse: bool) -> Fp8Decision:
    """Resolve ``--opt fp8=`` for a run: ``on`` refuses what cannot run (naming the reason and the fix),
    ``auto`` records the reason and runs the folder as stored, ``off`` runs it as stored."""
    spec, why = fp8_folder(mode, model, backend)
    if spec is None or why is not None:
        return Fp8Decision(mode, spec, False, str(why))
    fix_off = _fix_off(backend)
    why = dense_fp8_reason(device)
    alpha = None
    if why is None and sparse:
        alpha, probe = fp8_probe(device)
        why = None if alpha is not None else probe
    if why is not None:
        if mode == "on":
            raise DeviceError(f"--opt fp8=on: FP8 GEMMs cannot run here: {why}",
                              fix="run on a GPU with FP8 tensor cores (compute capability 8.9+; FP8 2:4 needs "
                              f"cuSPARSELt 0.6.2+, e.g. an H100), or {fix_off}")
        return Fp8Decision(mode, spec, False, f"FP8 GEMMs cannot run here ({why}); weights run as stored")
    what = "FP8 2:4 on cuSPARSELt and dense FP8 on torch._scaled_mm" if sparse else "dense FP8 on torch._scaled_mm"
    return Fp8Decision(mode, spec, True, f"{QUANT_NAME} applied: {what}", alpha)


# ----------------------------------------------------------------------------------- replacing the linears
@dataclass
class Fp8Applied:
    """What apply_fp8 did, for info() and sparse_kernels()."""

    dense: list[str] = field(default_factory=list)  # FP8 dense (torch._scaled_mm)
    sparse: list[str] = field(default_factory=list)  # FP8 2:4 (cuSPARSELt)
    kept: dict[str, str] = field(default_factory=dict)  # quantized in the folder but kept as stored: why
    excluded: list[str] = field(default_factory=list)  # not quantized in the folder (exclude_modules / unlisted)
    max_rel_err: float = 0.0

    @property
    def replaced(self) -> set[str]:
        return set(self.dense) | set(self.sparse)

    def summary(self) -> dict[str, Any]:
        return {"fp8_dense": len(self.dense), "fp8_2of4": len(self.sparse), "kept_quantized_as_stored": dict(self.kept),
                "not_quantized": len(self.excluded), "max_rel_err": self.max_rel_err}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def simulated_output(spec: QuantSpec, name: str, weight: torch.Tensor, bias: torch.Tensor | None,
                     x: torch.Tensor) -> torch.Tensor:
    """The simulated-quantization output of linear ``name`` (float64): eval/simquant.py's quantize-dequantize
    of the weight and of ``x`` with the folder's scales."""
    lq = spec.linear(name)
    fmt = FORMATS[spec.format]
    w = dequantized_weight(spec, name, weight.detach().cpu()).double()
    xs = sc.fake_quant(x.detach().cpu().float(), torch.tensor([lq.input_scale]), fmt.qmax, fmt.weight_dtype).double()
    y = xs @ w.t()
    return y if bias is None else y + bias.detach().cpu().double()


def apply_fp8(model: nn.Module, adapter: Adapter, decision: Fp8Decision, *, rtol: float, rows: int,
              want_sparse: bool = False) -> Fp8Applied:
    """Replace every quantized ``nn.Linear`` of ``model`` by an Fp8Linear (2:4 when ``want_sparse`` and the
    weight is 2:4 of a shape cuSPARSELt takes; else dense), each checked against the simulated reference."""
    spec = decision.spec
    assert spec is not None and decision.apply
    quantized = {lq.name: lq for lq in spec.linears}
    done = Fp8Applied()
    g = torch.Generator().manual_seed(0)
    for t in all_targets(model, adapter):
        lq = quantized.get(t.name)
        if lq is None:
            done.excluded.append(t.name)
            continue
        if t.in_dim != 1 or not isinstance(t.module, nn.Linear):
            done.kept[t.name] = "not an nn.Linear with an [out, in] weight"
            continue
        w = t.module.weight.data
        out_f, in_f = w.shape
        dev, dtype = w.device, w.dtype
        sparse = want_sparse and decision.alpha_mode is not None and holds_2of4(w) and fp8_shape_reason(out_f, in_f) is None
        why = dense_shape_reason(out_f, in_f, dev)
        if not sparse and why is not None:
            done.kept[t.name] = why
            continue
        w_scale = torch.tensor([lq.weight_scale], dtype=torch.float32, device=dev)
        w_q = sc.quantize_per_tensor(w, w_scale, FP8_DTYPE)
        bias = t.module.bias
        new = Fp8Linear(w_q, w_scale, torch.tensor([lq.input_scale], device=dev), bias, dtype,
                        decision.alpha_mode if sparse else None)
        amax = max(lq.input_amax, 1e-6)
        x = ((torch.rand(rows, in_f, generator=g) * 2 - 1) * amax).to(dtype)
        with torch.inference_mode():
            got = new(x.to(dev))
        ref = simulated_output(spec, t.name, w, bias, x)
        rel = relative_error(got.cpu(), ref)
        done.max_rel_err = max(done.max_rel_err, rel)
        if not rel <= rtol:
            raise CorrectnessError(
                f"{t.name}: {new.kind} output differs from the simulated FP8 reference (quantize-dequantize with "
                f"{QUANT_NAME}'s scales) by {rel:.3g} (relative to max |y|), above the tolerance {rtol}",
                fix="do not trust FP8 timings from this torch/GPU; run with --opt fp8=off, or report the torch version",
            )
        _set_module(model, t.name, new)
        (done.sparse if sparse else done.dense).append(t.name)
    return done


def fp8_info(decision: Fp8Decision, applied: Fp8Applied | None) -> dict[str, Any]:
    """``info()["fp8"]``: the option, whether the folder's FP8 quantization ran, why, and per-linear counts."""
    out: dict[str, Any] = {"mode": decision.mode, "applied": decision.apply and applied is not None
                           and bool(applied.replaced), "reason": decision.reason}
    if decision.spec is not None:
        out["format"] = decision.spec.format
        out["kv_cache"] = (f"{decision.spec.kv_cache} in {QUANT_NAME}: not applied; {KV_NOT_APPLIED}"
                           if decision.spec.kv_cache else KV_NOT_APPLIED)
    if applied is not None:
        out.update(applied.summary())
        out["gemm_out_dtype"] = str(FP8_OUT_DTYPE).removeprefix("torch.")
    return out
