"""``torch-2of4``: the hf backend with every 2:4 linear's weight as a torch semi-structured sparse tensor.

CUDA only. The kernel backend is chosen per run from the GPU and recorded (``info()["kernel"]`` and
``["kernel_reason"]``): torch's CUTLASS 2:4 kernels are built for sm8x only (A100, A10, L4, L40S, RTX 30/40)
and fail elsewhere with "Supported only on GPUs with compute capability 8.x"; on Hopper (sm90) and newer
only cuSPARSELt runs, so there it is required. ``auto`` takes cuSPARSELt where torch has it (torch's own
default), else CUTLASS on sm8x. Before anything is timed, each converted linear's output is checked against the masked-dense weight on
random inputs; a mismatch beyond tolerance stops the run (CorrectnessError).

Options (``--opt KEY=VALUE``): ``kernel=auto|cusparselt|cutlass``, ``rtol=`` (default 0.02, relative
to the reference output's max magnitude), ``check_tokens=`` (rows of the check input, default 64).
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

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}")
        if not self.rtol > 0 or self.check_tokens < 1:
            raise ValueError("rtol must be > 0 and check_tokens >= 1")


class Torch2of4Backend(HFBackend):
    name = "torch-2of4"
    Options = Torch2of4Options

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
        targets = all_targets(self.model, self.loaded.adapter)
        self._eligible = len(targets)
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
        if not self._converted:
            raise InputError(
                f"no linear of '{self.spec.model}' could use 2:4 kernels ({len(self._kept_dense)} kept dense; "
                f"first reason: {next(iter(self._kept_dense.values()), 'no targets')})",
                fix="prune the model to 2:4 first (`sparse-trt prune MODEL -o DIR --pattern 2:4`)",
            )
        log.info("torch-2of4: %d/%d linears on %s 2:4 kernels (max rel. error %.2g)",
                 len(self._converted), self._eligible, self._kind, self._max_rel_err)

    def sparse_kernels(self) -> SparseKernels:
        return SparseKernels(
            active=bool(self._converted),
            kind=f"torch semi-structured ({self._kind})",
            eligible_layers=self._eligible,
            sparse_layers=len(self._converted),
            detail=f"{len(self._kept_dense)} linears kept dense; outputs checked against masked-dense "
            f"(max relative error {self._max_rel_err:.3g})",
        )

    def info(self) -> dict[str, Any]:
        cc = torch.cuda.get_device_capability(self.spec.device) if self.spec.device.type == "cuda" else None
        return {"kernel": self._kind, "kernel_reason": self._kind_reason,
                "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
                "kept_dense": dict(self._kept_dense), "max_rel_err": self._max_rel_err}
