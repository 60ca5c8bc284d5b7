"""SparseGPT (Frantar & Alistarh, 2023): OBS-based one-shot pruning with lazy batch updates.

Given ``W [out, in]`` and the layer Hessian ``H = 2 X X^T / n [in, in]``:
dead inputs (zero diagonal) are zeroed, ``H`` is dampened by ``damp * mean(diag H)``, the
upper Cholesky factor of ``H^-1`` drives column-by-column pruning inside blocks of
``blocksize`` columns; N:M masks are chosen per M-column group from ``w^2 / diag(H^-1)^2``
as the block proceeds, unstructured masks per row per block; the error of each pruned column
is propagated to the remaining columns (OBS update), lazily across blocks.
"""

from __future__ import annotations

import torch

from sparse_trt.core.errors import NumericalError
from sparse_trt.core.patterns import NM, Pattern, Unstructured

from .masks import nm_keep_mask, row_keep_mask
from .result import PruneResult


def _inverse_cholesky(h: torch.Tensor, percdamp: float, max_retries: int) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + damp I)^-1, raising damp x10 on failure."""
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp = percdamp
    for attempt in range(max_retries + 1):
        hd = h + eye * (damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info2 = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info2) == 0 and torch.isfinite(upper).all():
                return upper, damp, attempt
        damp *= 10.0
    raise NumericalError(
        f"the Hessian stayed indefinite after {max_retries} dampening retries (last damp={damp / 10:g})",
        fix="raise the dampening (--opt damp=0.1), use more calibration samples, or use --method wanda",
    )


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    max_retries: int = 4,
    fixed_keep: torch.Tensor | None = None,
) -> PruneResult:
    """Prune ``weight`` with SparseGPT. ``fixed_keep`` imposes a precomputed mask (OBS update only)."""
    out_dtype = weight.dtype
    w = weight.detach().float().clone()
    rows, cols = w.shape
    if isinstance(pattern, NM) and blocksize % pattern.m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={pattern.m}")
    h = hessian.detach().float().clone().to(w.device)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    hinv, damp, retries = _inverse_cholesky(h, percdamp, max_retries)
    del h

    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(hinv1)

        if fixed_keep is not None:
            keep1 = fixed_keep[:, i1:i2].to(w.device).clone()
        elif isinstance(pattern, Unstructured):
            keep1 = row_keep_mask(w1.pow(2) / d1.pow(2).unsqueeze(0), pattern.sparsity)
        else:
            keep1 = torch.ones_like(w1, dtype=torch.bool)

        nm = pattern if (fixed_keep is None and isinstance(pattern, NM)) else None
        for i in range(count):
            if nm is not None and i % nm.m == 0:
                seg = slice(i, i + nm.m)
                keep1[:, seg] = nm_keep_mask(w1[:, seg].pow(2) / d1[seg].pow(2).unsqueeze(0), nm.n, nm.m)
            wcol = w1[:, i]
            q = wcol * keep1[:, i]
            e = (wcol - q) / d1[i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1.0)
            q1[:, i] = q
            err1[:, i] = e

        w[:, i1:i2] = q1
        keep[:, i1:i2] = keep1
        if i2 < cols:
            w[:, i2:].addmm_(err1, hinv[i1:i2, i2:], alpha=-1.0)

    w[:, dead] = 0.0
    return PruneResult(w.to(out_dtype), keep, {"damp": damp, "damp_retries": retries})
