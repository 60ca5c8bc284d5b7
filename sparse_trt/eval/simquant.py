"""Simulated quantization: evaluate a quantized folder on CPU as the TensorRT-LLM engine would compute it.

For every linear listed in ``quantization.json`` the weight is replaced (while inside the context) by
its quantize-dequantize image with the exported scales (after SmoothQuant smoothing for int8-sq), and
a forward pre-hook quantize-dequantizes the input with the static activation scale (after multiplying
by the SmoothQuant factors), as TensorRT-LLM's FP8 / INT8-SmoothQuant linears do: ``Q(x * s) @ Q(W / s)``.
A quantized KV cache is simulated on the key/value states the cache would hold (after RoPE), with the
layer's ``kv_cache_scaling_factor``. FP8 uses torch's ``float8_e4m3fn`` casts (saturating at ±448).
Linears in ``exclude_modules`` (``lm_head``, and those ``quantize --exclude`` kept out) are left as they
are, in the model dtype, as the engine runs them. Everything is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sparse_trt.models.adapters import Adapter, all_targets
from sparse_trt.quantize import scales as sc
from sparse_trt.quantize.calibrate import kv_hooks
from sparse_trt.quantize.errors import QuantSpecError
from sparse_trt.quantize.formats import FORMATS, KV_FORMATS
from sparse_trt.quantize.spec import QuantSpec


@dataclass(frozen=True)
class SimInfo:
    format: str
    kv_cache: str | None
    linears: int  # linears simulated
    kv_layers: int
    excluded: tuple[str, ...] = ()  # decoder linears left unquantized (quantize --exclude)


def dequantized_weight(spec: QuantSpec, name: str, w: torch.Tensor) -> torch.Tensor:
    """The weight the engine multiplies with (float32): quantize-dequantize of the (smoothed) ``w [out, in]``."""
    fmt = FORMATS[spec.format]
    lq = spec.linear(name)
    if not fmt.smoothquant:
        ws = torch.tensor([lq.weight_scale], dtype=torch.float32)
        return sc.dequantize(sc.quantize_per_tensor(w, ws, fmt.weight_dtype), ws)
    s = spec.vector(name, "smoothing")
    w2 = sc.resmooth_weight(sc.smooth_weight(w, s), s.to(w.dtype), spec.vector(name, "prequant").to(w.dtype))
    ws = spec.vector(name, "weight_scale")
    return sc.dequantize(sc.quantize_per_row(w2, ws, fmt.qmax, fmt.weight_dtype), ws)


@contextlib.contextmanager
def simulated_quantization(model: nn.Module, adapter: Adapter, spec: QuantSpec) -> Iterator[SimInfo]:
    if spec.format not in FORMATS:
        raise QuantSpecError(f"quantization.json names unknown format '{spec.format}'",
                             fix=f"this sparse_trt simulates {', '.join(FORMATS)}")
    fmt = FORMATS[spec.format]
    targets = {t.name: t for t in all_targets(model, adapter)}
    missing = [lq.name for lq in spec.linears if lq.name not in targets]
    if missing:
        raise QuantSpecError(f"quantization.json lists {missing[:3]} which the model does not have",
                             fix="the quantization belongs to another model; re-run `sparse-trt quantize`")
    excluded = set(spec.exclude_modules)
    both = [lq.name for lq in spec.linears if lq.name in excluded]
    if both:
        raise QuantSpecError(f"quantization.json both quantizes and excludes {both[:3]}",
                             fix="the file was edited by hand; re-run `sparse-trt quantize`")
    saved: dict[str, torch.Tensor] = {}
    handles = []

    def pre_hook(scale: torch.Tensor, prequant: torch.Tensor | None):
        def fn(_mod: nn.Module, args: tuple):
            x = args[0]
            if prequant is not None:
                x = x * prequant.to(x.dtype)
            return (sc.fake_quant(x, scale, fmt.qmax, fmt.weight_dtype), *args[1:])
        return fn

    try:
        for lq in spec.linears:
            t = targets[lq.name]
            w = t.weight_out_in()
            saved[lq.name] = t.module.weight.data.clone()
            t.set_weight_out_in(dequantized_weight(spec, lq.name, w).to(w.dtype))
            prequant = spec.vector(lq.name, "prequant") if fmt.smoothquant else None
            handles.append(t.module.register_forward_pre_hook(pre_hook(torch.tensor([lq.input_scale]), prequant)))
        kv_ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
        if spec.kv_cache is not None:
            kv = KV_FORMATS[spec.kv_cache]
            kv_scale = {e.layer: torch.tensor([max(e.k_scale, e.v_scale)]) for e in spec.kv}

            def kv_fn(name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                s = kv_scale[name]
                return sc.fake_quant(k, s, kv.qmax, kv.dtype), sc.fake_quant(v, s, kv.qmax, kv.dtype)

            kv_ctx = kv_hooks(model, adapter.layers(model), adapter.layers_path, kv_fn)
        with kv_ctx:
            yield SimInfo(spec.format, spec.kv_cache, len(spec.linears), len(spec.kv),
                          tuple(n for n in targets if n in excluded))
    finally:
        for h in handles:
            h.remove()
        for name, w in saved.items():
            targets[name].module.weight.data.copy_(w)
