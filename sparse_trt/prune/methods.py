"""Registry of pruning methods: name -> statistics needed, options schema, pure implementation.

Adding a method is one ``register(...)`` call; the layer walker and CLI pick it up by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sparse_trt.core.errors import InputError
from sparse_trt.core.patterns import NM, Pattern

from .blockfit import LOSSES, TARGETS, BlockFitSettings
from .magnitude import magnitude_prune
from .masks import keep_mask
from .refine import refine_nm_mask
from .refit import refit_kept
from .result import PruneResult
from .ria import ria_scores
from .sparsegpt import sparsegpt_prune
from .stats import InputStats
from .wanda import wanda_prune, wanda_scores

PruneFn = Callable[[torch.Tensor, InputStats, Pattern, Any], PruneResult]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    needs_norms: bool
    needs_hessian: bool
    fuse_shared_input: bool  # row-independent given the stats: linears sharing an input may be pruned as one matrix
    options_cls: type
    fn: PruneFn


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"method '{name}' is unknown", fix=f"use one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def parse_options(spec: MethodSpec, raw: Mapping[str, str]) -> Any:
    """Turn ``{"damp": "0.05"}`` into the method's frozen options dataclass; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(spec.options_cls)}
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise InputError(
                f"option '{key}' is not an option of method '{spec.name}'",
                fix=f"options of {spec.name}: {known}",
            )
        typ = type(fields[key].default)
        try:
            values[key] = _convert(text, typ)
        except ValueError:
            raise InputError(
                f"option {key}={text!r} of method '{spec.name}' is not a valid {typ.__name__}",
                fix=f"give {key} a {typ.__name__} value, e.g. --opt {key}={fields[key].default}",
            ) from None
    try:
        return spec.options_cls(**values)
    except ValueError as e:
        raise InputError(f"options of method '{spec.name}': {e}", fix="see `sparse-trt prune --help`") from None


def _convert(text: Any, typ: type) -> Any:
    if not isinstance(text, str):
        return typ(text)
    if typ is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return typ(text)


# ----------------------------------------------------------------------------------- built-ins


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class SparseGPTOptions:
    blocksize: int = 128
    damp: float = 0.01
    max_damp_retries: int = 4

    def __post_init__(self) -> None:
        if self.blocksize < 1:
            raise ValueError("blocksize must be >= 1")
        if not (0.0 < self.damp):
            raise ValueError("damp must be > 0 (fraction of the mean Hessian diagonal)")


def _magnitude(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: NoOptions) -> PruneResult:
    return magnitude_prune(w, pattern)


def _wanda(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: NoOptions) -> PruneResult:
    return wanda_prune(w, stats.col_norm_sq(), pattern)


def _sparsegpt(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: SparseGPTOptions) -> PruneResult:
    bs = opts.blocksize
    if isinstance(pattern, NM) and bs % pattern.m:
        bs = max(pattern.m, bs - bs % pattern.m)
    return sparsegpt_prune(
        w, stats.hessian(), pattern, blocksize=bs, percdamp=opts.damp, max_retries=opts.max_damp_retries
    )


register(MethodSpec("magnitude", "keep the largest |W| per row / per M-group", False, False, True, NoOptions, _magnitude))
register(MethodSpec("wanda", "|W|*||X_j|| per row / per M-group, no update (Sun et al. 2023)", True, False, True, NoOptions, _wanda))
register(
    MethodSpec(
        "sparsegpt",
        "OBS mask + weight update from the layer Hessian (Frantar & Alistarh 2023)",
        False,
        True,
        True,
        SparseGPTOptions,
        _sparsegpt,
    )
)


# ------------------------------------------------------------ quality methods (issue 6, docs/quality.md)


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


def _maybe_refit(w: torch.Tensor, res: PruneResult, stats: InputStats, opts, **info) -> PruneResult:
    weight = res.weight
    if opts.refit:
        weight = refit_kept(w, res.weight, res.keep, stats.hessian(), opts.refit, opts.damp).to(w.dtype)
    return PruneResult(weight, res.keep, {**res.info, **info})


@dataclass(frozen=True)
class SparseGPTRefitOptions(SparseGPTOptions):
    refit: int = 8  # conjugate-gradient iterations refitting the kept weights (prune/refit.py)
    permute: bool = False  # N:M only: exact input-channel permutation of down_proj / o_proj (prune/permute.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refit < 0:
            raise ValueError("refit must be >= 0 (conjugate-gradient iterations)")


def _sparsegpt_refit(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: SparseGPTRefitOptions) -> PruneResult:
    return _maybe_refit(w, _sparsegpt(w, stats, pattern, opts), stats, opts)


def _ria_obs(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: RIAOBSOptions) -> PruneResult:
    return _mask_then_obs(w, stats, pattern, opts, ria_scores(w, _col_norm_sq(stats), opts.alpha))


def _wanda_obs(w: torch.Tensor, stats: InputStats, pattern: Pattern, opts: MaskOBSOptions) -> PruneResult:
    return _mask_then_obs(w, stats, pattern, opts, wanda_scores(w, _col_norm_sq(stats)))


# Measured and not shipped as methods (benchmarks/RESULTS.md, "Pruning leaderboard (issue 6)"): plain
# RIA is worse than Wanda on SmolLM2 (2:4 and 4:8) and Gemma 3 (2:4); an imposed RIA or Wanda mask +
# OBS update reconstructs worse than SparseGPT, with or without swap refinement. The specs stay
# importable for experiments and tests; they are not registered.
RIA = MethodSpec(
    "ria",
    "relative importance (row + column) x activation norm^alpha, no update (Zhang et al. 2024)",
    True, False, False, RIAOptions, _ria,
)
RIA_OBS = (
    MethodSpec(
        "ria-obs",
        "RIA mask (optionally swap-refined), then SparseGPT's OBS update of the kept weights",
        True, True, False, RIAOBSOptions, _ria_obs,
    )
)
WANDA_OBS = (
    MethodSpec(
        "wanda-obs",
        "Wanda mask (optionally swap-refined), then SparseGPT's OBS update of the kept weights",
        True, True, True, MaskOBSOptions, _wanda_obs,
    )
)
register(
    MethodSpec(
        "sparsegpt-refit",
        "SparseGPT, then the kept weights refitted by least squares (conjugate gradients) with the mask fixed",
        False, True, True, SparseGPTRefitOptions, _sparsegpt_refit,
    )
)


@dataclass(frozen=True)
class SparseGPTBlockOptions(SparseGPTRefitOptions):
    """SparseGPT + refit per linear, then block reconstruction per decoder layer (prune/blockfit.py)."""

    block_steps: int = 8  # Adam steps per decoder layer on mini-batches of calibration windows (0: off)
    block_lr: float = 4e-3  # peak Adam step as a fraction of each weight matrix's RMS, cosine-decayed to 0
    block_batch: int = 2  # calibration windows per step
    block_target: str = "model"  # "model": the dense model's outputs; "layer": the dense layer on the pruned inputs
    block_loss: str = "token"  # "token": mean per-token relative error; "mse": relative MSE of the whole output

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_steps < 0:
            raise ValueError("block_steps must be >= 0")
        if not (self.block_lr > 0):
            raise ValueError("block_lr must be > 0")
        if self.block_batch < 1:
            raise ValueError("block_batch must be >= 1")
        if self.block_target not in TARGETS:
            raise ValueError(f"block_target must be {' or '.join(repr(t) for t in TARGETS)}")
        if self.block_loss not in LOSSES:
            raise ValueError(f"block_loss must be {' or '.join(repr(t) for t in LOSSES)}")

    def block_fit(self) -> BlockFitSettings | None:
        """What the layer walker runs after pruning each decoder layer (None: no block reconstruction)."""
        if self.block_steps == 0:
            return None
        return BlockFitSettings(self.block_steps, self.block_lr, self.block_batch, self.block_target, self.block_loss)


register(
    MethodSpec(
        "sparsegpt-block",
        "sparsegpt-refit, then each decoder layer's kept weights fitted to the dense model's outputs (block reconstruction)",
        False, True, True, SparseGPTBlockOptions, _sparsegpt_refit,
    )
)
