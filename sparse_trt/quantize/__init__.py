"""Quantization on top of N:M sparsity: FP8 and INT8 SmoothQuant scales, calibrated, zeros kept.

* ``formats``: the registry of weight formats (fp8, int8-sq) and KV-cache formats (fp8, int8);
* ``scales``: pure tensor functions (amax -> scale, SmoothQuant factors, quantize / dequantize);
* ``spec``: the versioned ``quantization.json`` (+ ``quant_scales.safetensors``) artifact;
* ``calibrate``: forward hooks that record activation and KV-cache ranges on calibration windows;
* ``api``: the ``quantize`` stage (model folder in, model folder + quantization.json out).
"""

from .formats import FORMATS, KV_FORMATS, QuantFormat, parse_format, parse_kv_format
from .spec import QUANT_NAME, QuantSpec, load_quant_spec

__all__ = [
    "FORMATS",
    "KV_FORMATS",
    "QUANT_NAME",
    "QuantFormat",
    "QuantSpec",
    "load_quant_spec",
    "parse_format",
    "parse_kv_format",
]
