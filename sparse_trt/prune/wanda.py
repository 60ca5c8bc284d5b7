"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, compared per output row or per M-group.

No weight update. ``col_norm_sq`` is the mean squared activation of each input channel.
"""

from __future__ import annotations

import torch

from sparse_trt.core.patterns import Pattern

from .masks import keep_mask
from .result import PruneResult


def wanda_scores(weight: torch.Tensor, col_norm_sq: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float() * col_norm_sq.to(weight.device).float().sqrt().unsqueeze(0)


def wanda_prune(weight: torch.Tensor, col_norm_sq: torch.Tensor, pattern: Pattern) -> PruneResult:
    keep = keep_mask(wanda_scores(weight, col_norm_sq), pattern)
    return PruneResult(weight * keep.to(weight.dtype), keep)
