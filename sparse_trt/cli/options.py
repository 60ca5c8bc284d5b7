"""Parsing of device and dtype options (user input -> typed torch values), at the CLI edge.

torch is imported when an option is resolved, not when the CLI starts: ``--help`` and argument errors
answer without loading it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sparse_trt.core.errors import DeviceError, InputError

if TYPE_CHECKING:
    import torch

_CUDA = "cuda"


def resolve_device(spec: str) -> torch.device:
    """'auto' -> the first CUDA device if present, else the CPU; 'cpu'; 'cuda' / 'cuda:i'."""
    import torch

    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device(_CUDA, 0) if torch.cuda.is_available() else torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if not m:
        raise InputError(f"device '{spec}' is not understood", fix="use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{spec}' was requested but CUDA is not available here", fix="use --device cpu or auto")
    idx = int(m.group(1) or 0)
    if idx >= torch.cuda.device_count():
        raise DeviceError(
            f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible",
            fix=f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
        )
    return torch.device(_CUDA, idx)


def resolve_dtype(spec: str | None) -> torch.dtype | None:
    """'auto' -> None (keep the checkpoint's dtype); else the named torch dtype."""
    if spec is None or spec.strip().lower() == "auto":
        return None
    from sparse_trt.core.device import DTYPE_NAMES

    try:
        return DTYPE_NAMES[spec.strip().lower()]
    except KeyError:
        raise InputError(f"dtype '{spec}' is not supported", fix="use auto, float32, float16 or bfloat16") from None
