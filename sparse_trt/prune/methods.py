"""Registry of pruning methods: name -> statistics needed, options schema, pure implementation.

Adding a method is one ``register(...)`` call; the layer walker and CLI pick it up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sparse_trt.core import options as core_options
from sparse_trt.core.errors import InputError
from sparse_trt.core.patterns import NM, Pattern

from .blockfit import LOSSES, TARGETS, BlockFitSettings
from .magnitude import magnitude_prune
from .refit import refit_kept
from .result import PruneResult
from .sparsegpt import sparsegpt_prune
from .stats import InputStats
from .wanda import wanda_prune

PruneFn = Callable[[torch.Tensor, InputStats, Pattern, Any], PruneResult]


@dataclass(frozen=True, kw_only=True)
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
    return core_options.parse_options(spec.options_cls, raw, f"method '{spec.name}'", "see `sparse-trt prune --help`")


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


# Row-independent without an update to batch: pruning linears that share an input one by one gives the same
# masks as pruning them as one matrix, without the concatenated copy (less peak memory on wide layers).
register(MethodSpec(name="magnitude", summary="keep the largest |W| per row / per M-group", needs_norms=False,
                    needs_hessian=False, fuse_shared_input=False, options_cls=NoOptions, fn=_magnitude))
register(MethodSpec(name="wanda", summary="|W|*||X_j|| per row / per M-group, no update (Sun et al. 2023)",
                    needs_norms=True, needs_hessian=False, fuse_shared_input=False, options_cls=NoOptions, fn=_wanda))
register(
    MethodSpec(
        name="sparsegpt",
        summary="OBS mask + weight update from the layer Hessian (Frantar & Alistarh 2023)",
        needs_norms=False, needs_hessian=True, fuse_shared_input=True, options_cls=SparseGPTOptions, fn=_sparsegpt,
    )
)


# ------------------------------------------------------------ quality methods (docs/quality.md)


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


register(
    MethodSpec(
        name="sparsegpt-refit",
        summary="SparseGPT, then the kept weights refitted by least squares (conjugate gradients) with the mask fixed",
        needs_norms=False, needs_hessian=True, fuse_shared_input=True, options_cls=SparseGPTRefitOptions,
        fn=_sparsegpt_refit,
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
        name="sparsegpt-block",
        summary="sparsegpt-refit, then each decoder layer's kept weights fitted to the dense model's outputs "
        "(block reconstruction)",
        needs_norms=False, needs_hessian=True, fuse_shared_input=True, options_cls=SparseGPTBlockOptions,
        fn=_sparsegpt_refit,
    )
)
