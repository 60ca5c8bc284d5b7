"""Block reconstruction of one pruned decoder layer inside the walker (the optimiser is prune/blockfit.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from sparse_trt.core.manifest import LayerRecord
from sparse_trt.models.adapters import Target

from .blockfit import BlockFitSettings, fit_kept_weights, relative_output_error
from .capture import expand_batch, first, map_tensors
from .layer import Alloc, WalkConfig, run_layer


def block_fit_settings(options: Any) -> BlockFitSettings | None:
    """Block-reconstruction settings of a method's options (their ``block_fit()``), or None."""
    block_fit = getattr(options, "block_fit", None)
    return block_fit() if block_fit is not None else None


def _float_kwargs(kwargs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return map_tensors(kwargs, lambda t: t.to(dtype) if t.is_floating_point() else t)


def fit_layer(
    layer: nn.Module,
    records: list[LayerRecord],
    targets: list[Target],
    inps: torch.Tensor,
    outs: torch.Tensor,
    reference: torch.Tensor,
    kwargs: dict[str, Any],
    cfg: WalkConfig,
    fit: BlockFitSettings,
    seed: int,
    alloc: Alloc | None = None,
) -> tuple[torch.Tensor, list[LayerRecord]]:
    """Block reconstruction of one pruned layer; returns its (new) outputs and updated records.

    ``reference`` holds the target outputs of the first ``len(reference)`` windows of ``inps``;
    the fit and its before/after errors use those windows.

    Only the weights of linears that were pruned are fitted (their zeros stay zeros); linears left
    dense by a plan or ``--exclude``, norms and biases keep their values. The fit runs in float32
    whatever the layer's dtype (its parameters are cast, buffers are left alone); the result is cast
    back, and kept only if it lowers the layer's output error on the fitting windows.
    """
    pruned = {r.name for r in records if r.pattern is not None}
    fitted = [t for t in targets if t.name in pruned]
    n_fit = reference.shape[0]
    before = relative_output_error(outs[:n_fit], reference, fit.loss)
    if not fitted:
        return outs, records
    dev = cfg.device
    params = list(layer.parameters())
    flags = [p.requires_grad for p in params]
    home_dtypes = [p.dtype for p in params]
    work_dtype = torch.promote_types(fitted[0].module.weight.dtype, torch.float32)
    saved = [t.module.weight.detach().clone() for t in fitted]
    for p in params:
        if p.is_floating_point():
            p.data = p.data.to(work_dtype)
    kw = _float_kwargs(kwargs, work_dtype)
    batch = max(1, min(fit.batch, cfg.chunk_samples))

    def forward(idx: torch.Tensor) -> torch.Tensor:
        x = inps[idx].to(device=dev, dtype=work_dtype)
        return first(layer(x, **expand_batch(kw, x.shape[0], dev)))

    try:
        for p in params:
            p.requires_grad_(False)
        weights = [t.module.weight for t in fitted]
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            fit_kept_weights(
                forward, reference, weights, dataclasses.replace(fit, batch=batch),
                torch.Generator().manual_seed(seed),
            )
    finally:
        for p, f, d in zip(params, flags, home_dtypes, strict=True):
            p.requires_grad_(f)
            p.grad = None
            p.data = p.data.to(d)
    with torch.no_grad():
        new_outs = run_layer(layer, inps, kwargs, dev, cfg.chunk_samples, alloc)
    after = relative_output_error(new_outs[:n_fit], reference, fit.loss)
    if not after < before:  # includes NaN: the fit did not help, put the pruned weights back
        with torch.no_grad():
            for t, w in zip(fitted, saved, strict=True):
                t.module.weight.copy_(w)
        new_outs, after = outs, before
    records = [
        dataclasses.replace(r, block_error_before=before, block_error_after=after) if r.name in pruned else r
        for r in records
    ]
    return new_outs, records
