"""Pure tensor functions for FP8 / INT8 SmoothQuant scales (no model walking, no I/O).

The arithmetic (dtypes of each step included) follows NVIDIA ModelOpt 0.47's max calibration,
``smoothquant`` (alpha, clamping, zero-channel handling), fused-GEMM preprocessing and TensorRT-LLM
export, so our checkpoints equal its checkpoints bit for bit (tests/test_quantize_modelopt.py):

* scale = amax / qmax, in float32, shape ``(1,)`` per tensor (a 0-dim scale would not promote a
  float16 weight to float32 before the division, and would round differently);
* an amax of 0 or NaN (a channel that never fired) is replaced by qmax, i.e. a scale of 1;
* SmoothQuant: ``s = max|W[:, j]|^(1-alpha) / max|X[:, j]|^alpha`` multiplies activations,
  ``W[:, j] / s_j`` compensates; both are elementwise along the input channel, so a zero weight
  stays zero and an N:M pattern along the inputs holds after smoothing.
"""

from __future__ import annotations

import torch

from sparse_trt.core.patterns import NM, nm_violations

from .errors import QuantPatternError

SMOOTH_MIN, SMOOTH_MAX = 1e-4, 1e4  # clamp of the SmoothQuant factors
_ZERO_CHANNEL = 1.0 / (1 << 31)  # activation channels at or below this amax are not smoothed


def sanitize_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Replace 0 / NaN by qmax and clamp into the dtype's positive finite range."""
    a = torch.nan_to_num(torch.where(amax == 0, torch.full_like(amax, qmax), amax), nan=qmax)
    info = torch.finfo(a.dtype)
    return a.clamp(min=info.tiny, max=info.max)


def scale_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """float32 scale(s) for ``amax``: a 0-dim amax gives shape (1,), a vector keeps its shape."""
    s = sanitize_amax(amax, qmax).float() / qmax
    return s.reshape(1) if s.dim() == 0 else s


def tensor_amax(t: torch.Tensor) -> torch.Tensor:
    """max |t| (0-dim, in t's dtype)."""
    return t.detach().abs().amax()


def row_amax(w: torch.Tensor) -> torch.Tensor:
    """max |w| per output row of a ``[out, in]`` weight."""
    return w.detach().abs().amax(dim=1)


def channel_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| per last-dim channel over all other dims (in x's dtype)."""
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)


def smoothing_factors(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant activation multipliers ``s [in]`` (float32) for a ``[out, in]`` weight."""
    a = act_amax.float().reshape(-1)
    ws = weight.detach().abs().amax(dim=0)  # per input channel, in the weight's dtype
    s = (ws.pow(1 - alpha) / a.pow(alpha)).reshape(-1)
    # A channel that never fired gets factor 1 (ModelOpt 0.47 intends the same but tests s.min(), which an
    # infinite factor never trips, and then clamps it to 1e4: a deliberate difference, docs/quantize.md).
    s[a <= _ZERO_CHANNEL] = 1
    return s.clamp(min=SMOOTH_MIN, max=SMOOTH_MAX)


def smooth_weight(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``W[:, j] / s_j`` (computed in float32, returned in W's dtype)."""
    inv = 1.0 / s.float()
    return (weight * inv[None, :]).to(weight.dtype)


def fuse_smoothing(stored: list[torch.Tensor]) -> torch.Tensor:
    """One set of factors for GEMMs fused into one (q/k/v, gate/up): the mean of their stored factors."""
    return torch.mean(torch.stack(stored), dim=0)


def resmooth_weight(smoothed: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Move an already smoothed weight from factors ``old`` to ``new`` (float32 math)."""
    if torch.equal(old, new):
        return smoothed
    return (smoothed.float() * old.float() / new.float()).to(smoothed.dtype)


def smoothed_act_amax(act_amax: torch.Tensor, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-tensor amax of the smoothed activations ``x * s`` (0-dim, in ``dtype``)."""
    return (act_amax.to(dtype) * s.float()).amax().to(dtype)


def quantize_per_tensor(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W / scale`` cast to a float8 ``dtype`` (scale: float32, shape (1,))."""
    return (weight / scale).to(dtype)


def quantize_per_row(weight: torch.Tensor, scale: torch.Tensor, qmax: float, dtype: torch.dtype) -> torch.Tensor:
    """``round(W / scale[row])`` clamped to the integer range of ``dtype``."""
    return (weight / scale[:, None]).round().clamp(-qmax - 1, qmax).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of a quantized weight (per-tensor or per-row scale)."""
    s = scale.float()
    return q.float() * (s[:, None] if s.numel() > 1 else s)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, qmax: float, dtype: torch.dtype) -> torch.Tensor:
    """Quantize-dequantize ``x`` with a static per-tensor scale, saturating at ±qmax (returns x's dtype)."""
    y = (x.float() / scale.float()).clamp(-qmax - (0 if dtype.is_floating_point else 1), qmax)
    y = y.to(dtype).float() if dtype.is_floating_point else y.round()
    return (y * scale.float()).to(x.dtype)


def kv_scale(amax: float, qmax: float, min_scale: float) -> float:
    s = float(scale_from_amax(torch.tensor(float(amax)), qmax))
    return max(s, min_scale)


def check_pattern(name: str, weight: torch.Tensor, pattern: NM, where: str) -> None:
    """Refuse a transform that broke the N:M pattern (weights ``[out, in]``; float8 checked via float32)."""
    w = weight.float() if weight.dtype.is_floating_point and weight.element_size() == 1 else weight
    v = nm_violations(w, pattern, 1)
    if v != 0:
        raise QuantPatternError(
            f"'{name}' breaks pattern {pattern} after {where} ({v} groups of {pattern.m} too dense)",
            fix="this is a bug in the quantizer: zeros must stay zeros; please report it with the model",
        )
