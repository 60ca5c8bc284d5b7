"""Byte sizes typed by users: ``8GB``, ``500MB``, ``1.5GiB``, ``1000000`` (bytes)."""

from __future__ import annotations

import re

from .errors import InputError

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str, what: str) -> int:
    """``text`` as a positive number of bytes; ``what`` names the option in the error."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise InputError(f"{what} '{text}' is not a size", fix=f"give bytes or a size with a unit, e.g. {what} 8GB (units: KB MB GB TB, KiB MiB GiB TiB)")
    return int(float(m.group(1)) * _UNITS[unit])
