"""The quantize stage's artifact: ``quantization.json`` (versioned) + ``quant_scales.safetensors``.

``quantization.json`` holds the format, the calibration, and per linear the calibrated input amax
and the scales the TensorRT-LLM checkpoint will carry (already unified across GEMMs that
TensorRT-LLM fuses: q/k/v, gate/up). Vectors (INT8 SmoothQuant factors and per-row weight scales)
live in ``quant_scales.safetensors`` under ``{linear}.{act_amax|smoothing|prequant|weight_scale}``:

* ``act_amax`` [in], float32: calibrated max |x| per input channel;
* ``smoothing`` [in], float32: this linear's own SmoothQuant factors ``s`` (``x * s``, ``W / s``);
* ``prequant`` [in], weight dtype: the factors the fused GEMM uses (mean over its members);
* ``weight_scale`` [out], float32: per-row scale of the smoothed weight.

The weights in the folder are the input's, unchanged (same dtype, same bytes): the export and the
simulated-quantization eval apply the transforms from this file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparse_trt.core.jsonio import read_json_object

from .errors import QuantSpecError

QUANT_NAME = "quantization.json"
SCALES_NAME = "quant_scales.safetensors"
SPEC_VERSION = 1
VECTOR_KINDS = ("act_amax", "smoothing", "prequant", "weight_scale")


@dataclass(frozen=True)
class LinearQuant:
    name: str  # HF module name, e.g. model.layers.0.self_attn.q_proj
    group: tuple[str, ...]  # the HF linears TensorRT-LLM fuses with it (itself alone if none)
    input_amax: float  # calibrated max |x| of its input (per tensor, before smoothing)
    input_scale: float  # activation scale of the (fused) GEMM, after smoothing for int8-sq
    weight_scale: float | None = None  # per-tensor weight scale (fp8); per-row scales are in the scales file


@dataclass(frozen=True)
class KVQuant:
    layer: str  # HF attention module name
    k_amax: float
    v_amax: float
    k_scale: float
    v_scale: float


@dataclass(frozen=True)
class QuantSpec:
    format: str
    quant_algo: str
    kv_cache: str | None
    kv_cache_quant_algo: str | None
    alpha: float | None  # SmoothQuant migration strength (int8-sq)
    calibration: dict[str, Any]  # source, nsamples, seqlen, seed
    calib_dtype: str
    weight_dtype: str
    family: str
    pattern: str | None
    linears: tuple[LinearQuant, ...]
    kv: tuple[KVQuant, ...] = ()
    exclude_modules: tuple[str, ...] = ("lm_head",)
    tool: str = "sparse_trt"
    tool_version: str = ""
    version: int = SPEC_VERSION
    seconds: float = 0.0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def linear(self, name: str) -> LinearQuant:
        for lq in self.linears:
            if lq.name == name:
                return lq
        raise QuantSpecError(f"{QUANT_NAME} has no entry for linear '{name}'",
                             fix="the quantization belongs to another model; re-run `sparse-trt quantize`")

    def vector(self, name: str, kind: str) -> torch.Tensor:
        key = f"{name}.{kind}"
        if key not in self.tensors:
            raise QuantSpecError(f"{SCALES_NAME} has no tensor '{key}'",
                                 fix="the scales file is incomplete or belongs to another model; re-run `sparse-trt quantize`")
        return self.tensors[key]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tensors"}
        d["linears"] = [asdict(x) for x in self.linears]
        d["kv"] = [asdict(x) for x in self.kv]
        d["exclude_modules"] = list(self.exclude_modules)
        if self.tensors:
            d["scales_file"] = SCALES_NAME
        return d

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        (directory / QUANT_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        if self.tensors:
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(directory / SCALES_NAME),
                      metadata={"format": "pt", "producer": "sparse_trt"})


def _strict(cls: type, d: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise QuantSpecError(f"{where} has unknown keys {sorted(unknown)}",
                             fix="it was written by another tool or version; re-run `sparse-trt quantize`")
    return d


def load_quant_spec(directory: Path | str) -> QuantSpec | None:
    """The folder's quantization (None when it has no quantization.json)."""
    directory = Path(directory)
    p = directory / QUANT_NAME
    if not p.is_file():
        return None
    fix = "re-run `sparse-trt quantize` on the unquantized folder"
    d = read_json_object(p, QuantSpecError, fix=fix)
    version = d.get("version")
    if not isinstance(version, int) or version > SPEC_VERSION or version < 1:
        raise QuantSpecError(f"'{p}' has version {version!r}; this sparse_trt reads versions 1..{SPEC_VERSION}",
                             fix="upgrade sparse_trt, or re-run `sparse-trt quantize` with this version")
    scales_file = d.pop("scales_file", None)
    try:
        _strict(QuantSpec, d, str(p))
        linears = tuple(LinearQuant(**{**_strict(LinearQuant, x, str(p)), "group": tuple(x["group"])}) for x in d.pop("linears"))
        kv = tuple(KVQuant(**_strict(KVQuant, x, str(p))) for x in d.pop("kv", []))
        d["exclude_modules"] = tuple(d.get("exclude_modules", ("lm_head",)))
        tensors: dict[str, torch.Tensor] = {}
        if scales_file is not None:
            sp = directory / str(scales_file)
            if not sp.is_file():
                raise QuantSpecError(f"'{p}' names {scales_file} but '{sp}' does not exist", fix=fix)
            try:
                with safe_open(str(sp), "pt") as f:
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
            except (OSError, RuntimeError) as e:
                raise QuantSpecError(f"'{sp}' is unreadable ({e})", fix=fix) from None
        return QuantSpec(**d, linears=linears, kv=kv, tensors=tensors)
    except (TypeError, KeyError, ValueError) as e:
        raise QuantSpecError(f"'{p}' is malformed ({e})", fix=fix) from None
