"""Pruning methods that were measured and not shipped: importable for experiments and tests, not registered.

Measured (benchmarks/RESULTS.md, "Pruning leaderboard"): plain RIA is worse than Wanda on SmolLM2 (2:4 and
4:8) and Gemma 3 (2:4); an imposed RIA or Wanda mask + OBS update reconstructs worse than SparseGPT, with or
without swap refinement. To try one, register its spec: ``methods.register(experimental.RIA)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_trt.core.patterns import NM, Pattern

from .masks import keep_mask
from .methods import MethodSpec, _maybe_refit
from .refine import refine_nm_mask
from .result import PruneResult
from .ria import ria_scores
from .sparsegpt import sparsegpt_prune
from .stats import InputStats
from .wanda import wanda_scores


@dataclass(frozen=True)
class RIAOptions:
    alpha: float = 0.5  # exponent of the activation norm (paper default 0.5; Wanda is 1)
    permute: bool = False  # N:M only: exact input-channel permutation of down_proj / o_proj (prune/permute.py)

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")


@dataclass(frozen=True)
class MaskOBSOptions:
    """A score mask, optional N:M swap refinement, then SparseGPT's OBS update of the survivors."""

    refine: int = 0  # N:M swap rounds before the update (0: off); see prune/refine.py
    refit: int = 0  # conjugate-gradient iterations refitting the kept weights after the update (prune/refit.py)
    permute: bool = False  # N:M only: exact input-channel permutation of down_proj / o_proj (prune/permute.py)
    blocksize: int = 128
    damp: float = 0.01
    max_damp_retries: int = 4

    def __post_init__(self) -> None:
        if self.refine < 0:
            raise ValueError("refine must be >= 0 (rounds of mask swaps)")
        if self.refit < 0:
            raise ValueError("refit must be >= 0 (conjugate-gradient iterations)")
        if self.blocksize < 1:
            raise ValueError("blocksize must be >= 1")
        if not (0.0 < self.damp):
            raise ValueError("damp must be > 0 (fraction of the mean Hessian diagonal)")


@dataclass(frozen=True)
class RIAOBSOptions(MaskOBSOptions):
    alpha: float = 0.5  # exponent of the activation norm in the RIA score

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")


def _col_norm_sq(stats: InputStats) -> torch.Tensor:
    if stats.sq_norms is not None:
        return stats.col_norm_sq()
    assert stats.xtx is not None
    return torch.diagonal(stats.xtx) / max(stats.count, 1)


def _ria(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: RIAOptions) -> PruneResult:
    keep = keep_mask(ria_scores(w, _col_norm_sq(stats), opts.alpha), pattern)
    return PruneResult(w * keep.to(w.dtype), keep)


def _mask_then_obs(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: MaskOBSOptions, scores: torch.Tensor) -> PruneResult:
    keep = keep_mask(scores, pattern)
    swaps = 0
    if opts.refine and isinstance(pattern, NM):
        assert stats.xtx is not None
        keep, swaps = refine_nm_mask(w, keep, stats.xtx, pattern.n, pattern.m, opts.refine)
    bs = opts.blocksize
    if isinstance(pattern, NM) and bs % pattern.m:
        bs = max(pattern.m, bs - bs % pattern.m)
    res = sparsegpt_prune(
        w, stats.hessian(), pattern, blocksize=bs, percdamp=opts.damp, max_retries=opts.max_damp_retries, fixed_keep=keep
    )
    return _maybe_refit(w, res, stats, opts, swaps=swaps)


def _ria_obs(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: RIAOBSOptions) -> PruneResult:
    return _mask_then_obs(w, stats, pattern, opts, ria_scores(w, _col_norm_sq(stats), opts.alpha))


def _wanda_obs(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: MaskOBSOptions) -> PruneResult:
    return _mask_then_obs(w, stats, pattern, opts, wanda_scores(w, _col_norm_sq(stats)))


RIA = MethodSpec(
    name="ria",
    summary="relative importance (row + column) x activation norm^alpha, no update (Zhang et al. 2024)",
    needs_norms=True, needs_hessian=False, fuse_shared_input=False, options_cls=RIAOptions, fn=_ria,
)
RIA_OBS = (
    MethodSpec(
        name="ria-obs",
        summary="RIA mask (optionally swap-refined), then SparseGPT's OBS update of the kept weights",
        needs_norms=True, needs_hessian=True, fuse_shared_input=False, options_cls=RIAOBSOptions, fn=_ria_obs,
    )
)
WANDA_OBS = (
    MethodSpec(
        name="wanda-obs",
        summary="Wanda mask (optionally swap-refined), then SparseGPT's OBS update of the kept weights",
        needs_norms=True, needs_hessian=True, fuse_shared_input=True, options_cls=MaskOBSOptions, fn=_wanda_obs,
    )
)
