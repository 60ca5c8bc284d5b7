"""``torch-2of4``: the hf backend with every 2:4 linear's weight as a torch semi-structured sparse tensor.

CUDA only. The kernel backend is chosen per run from the GPU and recorded (``info()["kernel"]`` and
``["kernel_reason"]``): torch's CUTLASS 2:4 kernels are built for sm8x only (A100, A10, L4, L40S, RTX 30/40)
and fail elsewhere with "Supported only on GPUs with compute capability 8.x"; on Hopper (sm90) and newer
only cuSPARSELt runs, so there it is required. ``auto`` takes cuSPARSELt where torch has it (torch's own
default), else CUTLASS on sm8x. Before anything is timed, each converted linear's output is checked against the masked-dense weight on
random inputs; a mismatch beyond tolerance stops the run (CorrectnessError).

Options (``--opt KEY=VALUE``): ``kernel=auto|cusparselt|cutlass``, ``rtol=`` (default 0.02, relative
to the reference output's max magnitude), ``check_tokens=`` (rows of the check input, default 64),
``fp8=auto|on|off`` and ``fp8_rtol=`` (default 0.02).

FP8 folders (``sparse-trt quantize --format fp8``): with ``fp8=auto`` (default) or ``on``, where torch's
cuSPARSELt runs FP8 (fp8_probe: sm89+/sm90, cuSPARSELt 0.6.2+), every quantized 2:4 linear of a shape
cuSPARSELt takes becomes an FP8 2:4 GEMM and every other quantized linear a dense FP8 GEMM
(torch._scaled_mm), both with the folder's static scales (fp8_linear.py), each checked against the
simulated FP8 reference before timing; linears the folder keeps unquantized take the 16-bit 2:4 path
below. Where FP8 2:4 cannot run, ``auto`` runs the folder as stored (recorded in info()["fp8"]) and
``on`` refuses; ``off`` always runs it as stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparse_trt.core.errors import DeviceError, InputError
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.models.adapters import all_targets

from ..errors import CorrectnessError
from ..results import SparseKernels
from .hf import HFBackend

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
TWO_FOUR = NM(2, 4)


def holds_2of4(w: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs (last dim) has at most 2 non-zeros (core.patterns' check)."""
    return w.dim() == 2 and nm_violations(w, TWO_FOUR, 1) == 0


KERNELS = ("auto", "cusparselt", "cutlass")


def choose_kernel(requested: str, capability: tuple[int, int], has_cusparselt: bool) -> tuple[str, str]:
    """(``"cusparselt"`` | ``"cutlass"``, why) for a GPU of ``capability``; DeviceError when none can run there."""
    if requested not in KERNELS:
        raise InputError(f"--opt kernel={requested} is not understood", fix="use kernel=auto, cusparselt or cutlass")
    major, minor = capability
    sm = f"sm{major}{minor}"
    cutlass_ok = major == 8
    if requested == "cutlass":
        if not cutlass_ok:
            raise DeviceError(f"torch's CUTLASS 2:4 kernels run on sm8x GPUs only; this GPU is {sm}",
                              fix="use --opt kernel=cusparselt (or auto): on sm90 and newer only cuSPARSELt runs")
        return "cutlass", f"requested (CUTLASS, {sm})"
    if requested == "cusparselt" or (requested == "auto" and not cutlass_ok):
        if not has_cusparselt:
            why = "requested" if requested == "cusparselt" else f"{sm} runs torch 2:4 kernels only through cuSPARSELt"
            raise DeviceError(f"cuSPARSELt is not available in this torch build ({why})",
                              fix="install a CUDA torch build with cuSPARSELt (the official wheels have it)"
                              + ("; or use --opt kernel=cutlass on sm8x" if cutlass_ok else ""))
        return "cusparselt", ("requested" if requested == "cusparselt" else
                              f"auto: {sm} runs torch 2:4 kernels only through cuSPARSELt (CUTLASS is sm8x only)")
    if has_cusparselt:
        return "cusparselt", f"auto: cuSPARSELt available ({sm}; torch's default)"
    return "cutlass", f"auto: no cuSPARSELt in this torch build, CUTLASS on {sm}"


def semi_structured_class(kernel: str, device: torch.device):
    """Choose the kernel for ``device``, configure torch's semi-structured subclass; (class, name, why)."""
    from torch.sparse import SparseSemiStructuredTensor
    from torch.sparse.semi_structured import (
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    has_lt = bool(getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available())
    choice, why = choose_kernel(kernel, torch.cuda.get_device_capability(device), has_lt)
    # to_sparse_semi_structured() reads this class flag to pick the subclass
    SparseSemiStructuredTensor._FORCE_CUTLASS = choice == "cutlass"
    if choice == "cusparselt":
        return SparseSemiStructuredTensorCUSPARSELT, "cuSPARSELt", why
    return SparseSemiStructuredTensorCUTLASS, "CUTLASS", why


def shape_ok(cls, dtype: torch.dtype, out_f: int, in_f: int) -> bool:
    cons = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(dtype)
    if cons is None:
        return False
    return out_f % cons.sparse_min_rows == 0 and in_f % cons.sparse_min_cols == 0


def check_cuda_2of4(device: torch.device) -> None:
    if device.type != "cuda":
        raise DeviceError(
            f"backend torch-2of4 needs a CUDA GPU with 2:4 sparse tensor cores; device is '{device}'. "
            "torch has no semi-structured sparse kernels on CPU",
            fix="on CPU use --backend hf (dense kernels: it shows zeros alone give no speedup); "
            "for sparse kernels run on an Ampere or newer GPU (compute capability 8.0+)",
        )
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise DeviceError(
            f"GPU {torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; 2:4 sparse tensor cores need 8.0+",
            fix="use an Ampere or newer GPU, or --backend hf",
        )


@dataclass(frozen=True)
class Torch2of4Options:
    kernel: str = "auto"  # auto (per GPU), cusparselt or cutlass
    rtol: float = 0.02  # sparse-vs-masked-dense relative tolerance of the check before timing
    check_tokens: int = 64  # rows of random activations in that check
    fp8: str = "auto"  # auto | on | off: run an FP8-quantized folder's linears as FP8 (2:4 and dense) GEMMs
    fp8_rtol: float = 0.02  # FP8-vs-simulated relative tolerance of the check before timing

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}")
        if self.fp8 not in ("auto", "on", "off"):
            raise ValueError("fp8 must be one of auto, on, off")
        if not self.fp8_rtol > 0:
            raise ValueError("fp8_rtol must be > 0")
        if not self.rtol > 0 or self.check_tokens < 1:
            raise ValueError("rtol must be > 0 and check_tokens >= 1")


class Torch2of4Backend(HFBackend):
    name = "torch-2of4"
    Options = Torch2of4Options
    fp8_sparse = True

    def __init__(self, spec) -> None:
        check_cuda_2of4(spec.device)
        if spec.dtype is not None and spec.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"torch-2of4 runs float16 or bfloat16, not {spec.dtype}", fix="use --dtype float16 or bfloat16")
        super().__init__(spec)
        self._kind = ""
        self._kind_reason = ""
        self._eligible = 0
        self._converted: list[str] = []
        self._kept_dense: dict[str, str] = {}
        self._max_rel_err = 0.0

    def load(self) -> None:
        super().load()
        dtype = next(self.model.parameters()).dtype
        if dtype not in SUPPORTED_DTYPES:
            raise InputError(f"the model loaded as {dtype}; torch-2of4 kernels need float16 or bfloat16",
                             fix="pass --dtype float16 (or bfloat16)")
        cls, self._kind, self._kind_reason = semi_structured_class(self.opts.kernel, self.spec.device)
        from torch.sparse import to_sparse_semi_structured

        rtol, rows = self.opts.rtol, self.opts.check_tokens
        g = torch.Generator(device=self.spec.device).manual_seed(0)
        targets = all_targets(self.model, self.loaded.adapter)  # linears FP8 replaced are no longer nn.Linear
        fp8 = self._fp8_done
        self._eligible = len(targets) + (len(fp8.replaced) if fp8 is not None else 0)
        for t in targets:
            if t.in_dim != 1:
                self._kept_dense[t.name] = "Conv1D weight layout ([in, out]) is not converted"
                continue
            w = t.module.weight.data
            out_f, in_f = w.shape
            if not holds_2of4(w):
                self._kept_dense[t.name] = "weight is not 2:4 sparse (dense on purpose, or not pruned)"
                continue
            if not shape_ok(cls, dtype, out_f, in_f):
                self._kept_dense[t.name] = f"shape {out_f}x{in_f} not supported by {self._kind} for {dtype}"
                continue
            sparse_w = to_sparse_semi_structured(w.contiguous())
            x = torch.randn(rows, in_f, device=w.device, dtype=dtype, generator=g)
            bias = t.module.bias
            ref = F.linear(x, w, bias)
            got = F.linear(x, sparse_w, bias)
            scale = float(ref.abs().max().clamp_min(1e-6))
            rel = float((got.float() - ref.float()).abs().max()) / scale
            self._max_rel_err = max(self._max_rel_err, rel)
            if not rel <= rtol:
                raise CorrectnessError(
                    f"{t.name}: {self._kind} 2:4 output differs from the masked-dense output by {rel:.3g} "
                    f"(relative to max |y|), above the tolerance {rtol}",
                    fix="do not trust timings from this kernel; try --opt kernel=cutlass, or report the torch version",
                )
            t.module.weight = nn.Parameter(sparse_w, requires_grad=False)
            self._converted.append(t.name)
        if not self._converted and not (fp8 is not None and fp8.sparse):
            raise InputError(
                f"no linear of '{self.spec.model}' could use 2:4 kernels ({len(self._kept_dense)} kept dense; "
                f"first reason: {next(iter(self._kept_dense.values()), 'no targets')})",
                fix="prune the model to 2:4 first (`sparse-trt prune MODEL -o DIR --pattern 2:4`)",
            )
        log.info("torch-2of4: %d/%d linears on %s 2:4 kernels (max rel. error %.2g)",
                 len(self._converted), self._eligible, self._kind, self._max_rel_err)

    def sparse_kernels(self) -> SparseKernels:
        fp8 = self._fp8_done
        n_fp8 = len(fp8.sparse) if fp8 is not None else 0
        kind = f"torch semi-structured ({self._kind})"
        if n_fp8:
            kind = f"cuSPARSELt FP8 2:4 ({n_fp8} linears)" + (f" + {kind} ({len(self._converted)} linears)"
                                                                 if self._converted else "")
        return SparseKernels(
            active=bool(self._converted) or n_fp8 > 0,
            kind=kind,
            eligible_layers=self._eligible,
            sparse_layers=len(self._converted) + n_fp8,
            detail=f"{len(self._kept_dense)} linears kept dense; outputs checked against masked-dense "
            f"(max relative error {self._max_rel_err:.3g})" + self._fp8_detail(),
        )

    def info(self) -> dict[str, Any]:
        cc = torch.cuda.get_device_capability(self.spec.device) if self.spec.device.type == "cuda" else None
        return {"kernel": self._kind, "kernel_reason": self._kind_reason,
                "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
                "kept_dense": dict(self._kept_dense), "max_rel_err": self._max_rel_err, **super().info()}


# --- FP8 (E4M3) 2:4 GEMMs: cuSPARSELt only ------------------------------------------------------------------------
# torch's semi-structured tensor refuses ``mm`` on float8 ("please use torch._scaled_mm"), and its _scaled_mm
# override (torch/sparse/_semi_structured_ops.py) calls ``torch._cslt_sparse_mm(packed, B, alpha=scale_a * scale_b,
# out_dtype=...)``: cuSPARSELt has no per-operand scales, the product of the two per-tensor scales is its alpha.
# The functions below make the same calls directly on the compressed weight, so the dense side (torch._scaled_mm,
# cuBLASLt) and the sparse side (cuSPARSELt) see the same FP8 operands and scales.

FP8_DTYPE: torch.dtype | None = getattr(torch, "float8_e4m3fn", None)
FP8_OUT_DTYPE = torch.bfloat16  # both FP8 GEMMs write bfloat16
FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (sm89) and Hopper (sm90) or newer
FP8_MIN_CUSPARSELT = 602  # torch compiles the float8 cases of _cslt_compress/_cslt_sparse_mm for cuSPARSELt >= 0.6.2
#: how the scale product reaches cuSPARSELt: a vector of one alpha per output row is read on the device; a
#: 1-element alpha is read on the host with ``alpha.item()`` on every call (a device-to-host copy that would be
#: timed as part of each sparse GEMM), so ``vector`` is preferred and ``scalar`` kept as the fallback
FP8_ALPHA_MODES = ("vector", "scalar")


def fp8_shape_constraints():
    """torch's cuSPARSELt (sparse_min_rows, sparse_min_cols, dense_min_rows, dense_min_cols) for float8, or None."""
    from torch.sparse.semi_structured import SparseSemiStructuredTensorCUSPARSELT

    if FP8_DTYPE is None:
        return None
    return getattr(SparseSemiStructuredTensorCUSPARSELT, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(FP8_DTYPE)


#: torch._scaled_mm (FP8, CUDA) needs K and N multiples of 16 (torch/_meta_registrations.py _check_scaled_mm_sizes)
SCALED_MM_MULTIPLE = 16


def fp8_shape_reason(out_f: int, in_f: int) -> str | None:
    """Why an ``[out_f, in_f]`` weight cannot run both FP8 GEMMs (None: it can)."""
    cons = fp8_shape_constraints()
    if cons is None:
        return "this torch lists no float8_e4m3fn shape constraints for cuSPARSELt (no FP8 2:4 support)"
    bad = []
    if out_f < cons.sparse_min_rows or out_f % cons.sparse_min_rows:
        bad.append(f"out_features {out_f} is not a multiple of {cons.sparse_min_rows}")
    if in_f < cons.sparse_min_cols or in_f % cons.sparse_min_cols:
        bad.append(f"in_features {in_f} is not a multiple of {cons.sparse_min_cols}")
    if out_f % SCALED_MM_MULTIPLE or in_f % SCALED_MM_MULTIPLE:
        bad.append(f"torch._scaled_mm needs both dimensions to be multiples of {SCALED_MM_MULTIPLE}")
    return "; ".join(bad) or None


def fp8_padded_tokens(tokens: int) -> int:
    """Token rows the cuSPARSELt FP8 GEMM runs: padded up to torch's dense_min_rows for float8 (as torch's own
    semi-structured linear pads its input)."""
    cons = fp8_shape_constraints()
    m = cons.dense_min_rows if cons is not None else 1
    return -(-tokens // m) * m


def fp8_static_reason(device: torch.device) -> str | None:
    """Why FP8 2:4 GEMMs cannot run on ``device``, from facts alone (no kernel launched); None: try the probe."""
    if FP8_DTYPE is None or not hasattr(torch, "_scaled_mm") or not hasattr(torch, "_cslt_sparse_mm"):
        return f"torch {torch.__version__} has no float8_e4m3fn / _scaled_mm / _cslt_sparse_mm"
    if device.type != "cuda":
        return f"FP8 2:4 GEMMs (torch._scaled_mm vs cuSPARSELt) need a CUDA GPU (device is {device})"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_MIN_CAPABILITY:
        return (f"compute capability {major}.{minor} < {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} has no FP8 "
                "tensor cores (Ada sm89 / Hopper sm90 or newer)")
    lt = getattr(torch.backends, "cusparselt", None)
    if lt is None or not lt.is_available():
        return "this torch build has no cuSPARSELt (the official CUDA wheels have it)"
    version = lt.version()
    if version is None or version < FP8_MIN_CUSPARSELT:
        return f"cuSPARSELt {version} in this torch build is older than 0.6.2, the first with FP8 (E4M3)"
    return None


def quantize_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn tensor, float32 scale of shape (1,)) with one scale per tensor: scale = amax / 448, values
    saturated at +-448; zeros stay zeros, so a 2:4 weight stays 2:4. ``q.float() * scale`` dequantizes."""
    from sparse_trt.quantize.formats import FORMATS
    from sparse_trt.quantize.scales import scale_from_amax, tensor_amax

    fmt = FORMATS["fp8"]
    x = t.float()
    scale = scale_from_amax(tensor_amax(x), fmt.qmax)
    return (x / scale).clamp(-fmt.qmax, fmt.qmax).to(fmt.weight_dtype), scale


def fp8_alpha(scale_x: torch.Tensor, scale_w: torch.Tensor, out_f: int, mode: str) -> torch.Tensor:
    """cuSPARSELt's alpha: the product of the two per-tensor scales, one per output row or a single element."""
    if mode not in FP8_ALPHA_MODES:
        raise ValueError(f"alpha mode must be one of {FP8_ALPHA_MODES}")
    a = (scale_x.float() * scale_w.float()).reshape(1)
    return a.expand(out_f).contiguous() if mode == "vector" else a


def fp8_compress(w_q: torch.Tensor) -> torch.Tensor:
    """cuSPARSELt's packed form (kept values + metadata, [out, *]) of a contiguous float8 2:4 ``[out, in]`` weight."""
    return torch._cslt_compress(w_q.contiguous())


def fp8_sparse_mm(packed: torch.Tensor, x_q_padded: torch.Tensor, alpha: torch.Tensor, tokens: int) -> torch.Tensor:
    """``x @ W.T`` as ``[tokens, out]``: cuSPARSELt computes ``alpha * (W @ x_padded.T)`` = ``[out, padded]``; the
    padded rows are dropped by a view (the dense operand is ``x_padded.t()``, as torch's semi-structured linear
    passes it)."""
    y = torch._cslt_sparse_mm(packed, x_q_padded.t(), None, alpha, FP8_OUT_DTYPE, False, 0, 1, -1)
    return y[:, :tokens].t()


def fp8_dense_mm(x_q: torch.Tensor, w_q: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    """``(x_q * scale_x) @ (w_q * scale_w).T`` in bfloat16 by torch._scaled_mm (x row-major, W.T column-major)."""
    return torch._scaled_mm(x_q, w_q.t(), scale_a=scale_x, scale_b=scale_w, out_dtype=FP8_OUT_DTYPE)


def fp8_reference(x_q: torch.Tensor, scale_x: torch.Tensor, w_q: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    """The exact product of the dequantized operands, in float64 (no TF32, no accumulation-order effects)."""
    return (x_q.double() * scale_x.double()) @ (w_q.double() * scale_w.double()).t()


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| relative to max |ref| (the scale torch-2of4's check uses); inf for NaN/inf outputs."""
    diff = (got.double() - ref.double()).abs().max()
    if not torch.isfinite(diff):
        return float("inf")
    return float(diff) / max(float(ref.double().abs().max()), 1e-12)


def fp8_probe(device: torch.device, rtol: float = 0.02) -> tuple[str | None, str]:
    """Run both FP8 GEMMs once on a tiny 2:4 weight: (alpha mode that computed the right result, what happened).

    ``(None, why)`` when FP8 2:4 cannot run here: the reason from fp8_static_reason, or the exception text /
    wrong result of the first call (torch's own tests expect FP8 cuSPARSELt to fail on sm89 before CUDA 13).
    """
    from ..synth import mask_2of4_

    why = fp8_static_reason(device)
    if why is not None:
        return None, why
    cons = fp8_shape_constraints()
    if cons is None:
        return None, fp8_shape_reason(1, 1)  # torch lists no float8 constraints: no FP8 2:4 in this torch
    out_f, in_f, tokens = 2 * cons.sparse_min_rows, 2 * cons.sparse_min_cols, cons.dense_min_rows
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=g)
    mask_2of4_(w)
    x = torch.randn(tokens, in_f, generator=g)
    try:
        w_q, sw = (t.to(device) for t in quantize_fp8(w))
        x_q, sx = (t.to(device) for t in quantize_fp8(x))
        ref = fp8_reference(x_q, sx, w_q, sw)
        dense_err = relative_error(fp8_dense_mm(x_q, w_q, sx, sw), ref)
        packed = fp8_compress(w_q)
    except Exception as e:  # noqa: BLE001 - any failure of the probe call is the reason FP8 is not available
        return None, f"FP8 probe call failed: {type(e).__name__}: {_first_line(e)}"
    if not dense_err <= rtol:
        return None, f"torch._scaled_mm FP8 result off by {dense_err:.3g} (relative) on the probe"
    tried = []
    for mode in FP8_ALPHA_MODES:
        try:
            err = relative_error(fp8_sparse_mm(packed, x_q, fp8_alpha(sx, sw, out_f, mode), tokens), ref)
            torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001
            tried.append(f"alpha {mode}: {type(e).__name__}: {_first_line(e)}")
            continue
        if err <= rtol:
            return mode, f"cuSPARSELt FP8 ok (alpha {mode}, probe rel. error {err:.2g})"
        tried.append(f"alpha {mode}: result off by {err:.3g} (relative)")
    return None, "cuSPARSELt FP8 probe failed: " + "; ".join(tried)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else "(no message)"
