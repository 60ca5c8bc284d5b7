"""Device and dtype parsing (edge input -> typed torch values). No defaults hard-wired into library code."""

from __future__ import annotations

import re

import torch

from .errors import DeviceError, InputError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(spec: str) -> torch.device:
    """'auto' -> first CUDA device if present else CPU; 'cpu'; 'cuda' / 'cuda:i'."""
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
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
    return torch.device("cuda", idx)


def resolve_dtype(spec: str | None) -> torch.dtype | None:
    """'auto' -> None (keep the checkpoint's dtype); else the named torch dtype."""
    if spec is None or spec.strip().lower() == "auto":
        return None
    try:
        return _DTYPES[spec.strip().lower()]
    except KeyError:
        raise InputError(f"dtype '{spec}' is not supported", fix="use auto, float32, float16 or bfloat16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (host: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30
