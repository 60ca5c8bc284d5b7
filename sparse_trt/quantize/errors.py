"""Errors of the quantize stage (subclasses of the core hierarchy, same exit codes)."""

from __future__ import annotations

from sparse_trt.core.errors import InputError, ManifestError, UnsupportedModelError, VerificationError


class AlreadyQuantizedError(InputError):
    """The input folder already holds a quantization.json (or is a quantized checkpoint)."""


class QuantExportError(UnsupportedModelError):
    """The model's family has no quantized TensorRT-LLM export."""


class QuantSpecError(ManifestError):
    """quantization.json / quant_scales.safetensors is missing, corrupt or does not match the weights."""


class QuantPatternError(VerificationError):
    """A transform (smoothing, quantization) broke the N:M pattern of a weight."""
