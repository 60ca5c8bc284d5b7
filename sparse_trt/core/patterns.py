"""Sparsity patterns, parsed once from user strings into typed values.

``"2:4"`` -> ``NM(2, 4)``: at most N non-zeros in every group of M consecutive weights along
the input (reduction) dimension (NVIDIA's convention; 2:4 is what Sparse Tensor Cores run).
``"0.5"`` -> ``Unstructured(0.5)``: that fraction of each output row's weights is zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import PatternError


@dataclass(frozen=True)
class NM:
    n: int
    m: int

    def __post_init__(self) -> None:
        if not (0 < self.n < self.m):
            raise PatternError(
                f"pattern '{self.n}:{self.m}' is invalid: N:M needs 0 < N < M",
                fix="use e.g. 2:4 (Sparse Tensor Cores) or 4:8",
            )

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def is_2of4(self) -> bool:
        return self.n == 2 and self.m == 4

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Unstructured:
    sparsity: float

    def __post_init__(self) -> None:
        if not (0.0 < self.sparsity < 1.0):
            raise PatternError(
                f"sparsity {self.sparsity} is outside (0, 1)",
                fix="give a fraction such as 0.5, or an N:M pattern such as 2:4",
            )

    @property
    def is_2of4(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self.sparsity:g}"


Pattern = NM | Unstructured

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(text: str) -> Pattern:
    """Parse ``"N:M"`` or a fraction in (0, 1). Raises PatternError naming the input."""
    if isinstance(text, (NM, Unstructured)):
        return text
    s = str(text).strip()
    m = _NM_RE.match(s)
    if m:
        n_, m_ = int(m.group(1)), int(m.group(2))
        if not (0 < n_ < m_):
            raise PatternError(
                f"pattern '{s}' is invalid: N:M needs 0 < N < M (N non-zeros kept in every M weights)",
                fix="use e.g. --pattern 2:4 or --pattern 4:8",
            )
        return NM(n_, m_)
    try:
        frac = float(s.rstrip("%")) / (100.0 if s.endswith("%") else 1.0)
    except ValueError:
        raise PatternError(
            f"pattern '{s}' is neither N:M nor a fraction",
            fix="use --pattern 2:4, 4:8, N:M with 0 < N < M, or a fraction in (0, 1) such as 0.5",
        ) from None
    if not (0.0 < frac < 1.0):
        raise PatternError(
            f"sparsity '{s}' is outside (0, 1)",
            fix="give a fraction strictly between 0 and 1, e.g. --pattern 0.5",
        )
    return Unstructured(frac)


def pattern_to_dict(p: Pattern) -> dict:
    if isinstance(p, NM):
        return {"kind": "nm", "n": p.n, "m": p.m}
    return {"kind": "unstructured", "sparsity": p.sparsity}


def pattern_from_dict(d: dict) -> Pattern:
    try:
        if d["kind"] == "nm":
            return NM(int(d["n"]), int(d["m"]))
        if d["kind"] == "unstructured":
            return Unstructured(float(d["sparsity"]))
    except (KeyError, TypeError, ValueError) as e:
        raise PatternError(f"pattern record {d!r} is malformed ({e})") from None
    raise PatternError(f"pattern kind {d.get('kind')!r} is unknown (expected 'nm' or 'unstructured')")


def nm_violations(weight: torch.Tensor, pattern: NM, in_dim: int = 1) -> int:
    """Number of M-groups along ``in_dim`` holding more than N non-zeros (0 means the pattern holds)."""
    w = weight.detach()
    if in_dim != w.dim() - 1:
        w = w.movedim(in_dim, -1)
    if w.shape[-1] % pattern.m:
        return -1
    nz = (w.reshape(-1, pattern.m) != 0).sum(dim=-1)
    return int((nz > pattern.n).sum())


def check_divisible(name: str, in_features: int, pattern: Pattern) -> None:
    if isinstance(pattern, NM) and in_features % pattern.m:
        raise PatternError(
            f"layer '{name}' has input dimension {in_features}, not divisible by M={pattern.m} of pattern {pattern}",
            fix=f"exclude it with --exclude '{name}' or choose an M that divides {in_features}",
        )
