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

from .magnitude import magnitude_prune
from .result import PruneResult
from .sparsegpt import sparsegpt_prune
from .stats import InputStats
from .wanda import wanda_prune

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
