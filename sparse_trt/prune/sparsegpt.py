"""SparseGPT (Frantar & Alistarh, 2023): OBS-based one-shot pruning with lazy batch updates.

Given ``W [out, in]`` and the layer Hessian ``H = 2 X X^T / n [in, in]``:
dead inputs (zero diagonal) are zeroed, ``H`` is dampened by ``damp * mean(diag H)``, the
upper Cholesky factor of ``H^-1`` drives column-by-column pruning inside blocks of
``blocksize`` columns; N:M masks are chosen per M-column group from ``w^2 / diag(H^-1)^2``
as the block proceeds, unstructured masks per row per block; the error of each pruned column
is propagated to the remaining columns (OBS update), lazily across blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sparse_trt.core.errors import NumericalError
from sparse_trt.core.patterns import NM, Pattern, Unstructured

from .masks import nm_keep_mask, row_keep_mask
from .result import PruneResult


@contextlib.contextmanager
def _few_threads(device: torch.device) -> Iterator[None]:
    """Run the column loop's tiny vector ops on one CPU thread.

    Each op touches a few thousand floats: thread fan-out costs more than it saves, and on a
    busy machine OpenMP threads waiting for a descheduled sibling made the loop ~15x slower
    (measured: 2.7 s vs 0.16 s for a 3072x576 matrix at load average 5 on 2 cores).
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor | None:
    """Upper factor ``U`` with ``H^-1 = U^T U``, or None if ``H`` is not positive definite.

    With ``J`` the exchange matrix and ``J H J = M M^T`` (lower Cholesky), ``U = J M^-1 J``.
    One Cholesky and one triangular inverse: several times cheaper than Cholesky ->
    ``cholesky_inverse`` -> Cholesky, and ``cholesky_inverse`` is pathologically slow on some
    CPU builds (about 17 s for 1536x1536 on the 2-core benchmark machine, vs 0.3 s for this).
    """
    flipped = h.flip(0).flip(1)
    lower, info = torch.linalg.cholesky_ex(flipped)
    if int(info) != 0:
        return None
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False)
    upper = inv_lower.flip(0).flip(1)
    if not torch.isfinite(upper).all():
        return None
    return upper


def _inverse_cholesky(h: torch.Tensor, percdamp: float, max_retries: int) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, raising damp x10 on failure."""
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp = percdamp
    for attempt in range(max_retries + 1):
        upper = _upper_cholesky_of_inverse(h + eye * (damp * mean_diag))
        if upper is not None:
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
        step = nm.m if nm is not None else min(16, count)
        with _few_threads(w.device):
            # Columns are processed in small groups. A group's current values are its original
            # values minus the OBS updates of all earlier columns of the block (one GEMM); inside
            # the group the updates are applied column by column. This is the same arithmetic as
            # updating every later column after each column, with the bulk of it done as GEMMs.
            for g0 in range(0, count, step):
                g1 = min(g0 + step, count)
                wg = w1[:, g0:g1]
                if g0:
                    wg = wg - err1[:, :g0] @ hinv1[:g0, g0:g1]
                if nm is not None:
                    keep1[:, g0:g1] = nm_keep_mask(wg.pow(2) / d1[g0:g1].pow(2).unsqueeze(0), nm.n, nm.m)
                kg = keep1[:, g0:g1]
                for j in range(g1 - g0):
                    wcol = wg[:, j]
                    q = wcol * kg[:, j]
                    e = (wcol - q) / d1[g0 + j]
                    if j + 1 < g1 - g0:
                        wg[:, j + 1 :] -= e.unsqueeze(1) * hinv1[g0 + j, g0 + j + 1 : g1].unsqueeze(0)
                    q1[:, g0 + j] = q
                    err1[:, g0 + j] = e

        w[:, i1:i2] = q1
        keep[:, i1:i2] = keep1
        if i2 < cols:
            w[:, i2:].addmm_(err1, hinv[i1:i2, i2:], alpha=-1.0)

    w[:, dead] = 0.0
    return PruneResult(w.to(out_dtype), keep, {"damp": damp, "damp_retries": retries})
