"""Magnitude pruning: keep the largest |W| per row (unstructured) or per M-group (N:M)."""

from __future__ import annotations

import torch

from sparse_trt.core.patterns import Pattern

from .masks import keep_mask
from .result import PruneResult


def magnitude_prune(weight: torch.Tensor, pattern: Pattern) -> PruneResult:
    keep = keep_mask(weight.detach().abs().float(), pattern)
    return PruneResult(weight * keep.to(weight.dtype), keep)
