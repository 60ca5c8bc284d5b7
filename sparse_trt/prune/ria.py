"""RIA (relative importance and activations; Zhang et al., ICLR 2024) mask scores.

``score_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** alpha``: a weight
counts relative to the other weights of its output row *and* of its input column, so no single
input channel or output row can lose all of its connections; ``alpha`` (paper default 0.5)
softens the activation scaling compared with Wanda's ``alpha = 1``.

The column sums run over every output row of the matrix given, so the scores are not row
independent: prune linears that share an input one matrix at a time (the registry says so).
"""

from __future__ import annotations

import torch

from sparse_trt.core.patterns import Pattern

from .masks import keep_mask
from .result import PruneResult


def ria_scores(weight: torch.Tensor, col_norm_sq: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    a = weight.detach().abs().float()
    tiny = torch.finfo(a.dtype).tiny
    rel = a / a.sum(dim=1, keepdim=True).clamp_min(tiny) + a / a.sum(dim=0, keepdim=True).clamp_min(tiny)
    act = col_norm_sq.to(a.device).float().clamp_min(0).sqrt().pow(alpha)
    return rel * act.unsqueeze(0)


def ria_prune(weight: torch.Tensor, col_norm_sq: torch.Tensor, pattern: Pattern, alpha: float = 0.5) -> PruneResult:
    keep = keep_mask(ria_scores(weight, col_norm_sq, alpha), pattern)
    return PruneResult(weight * keep.to(weight.dtype), keep)
