"""Mask refinement for N:M (DSnoT-like): swap a kept and a pruned weight of the same M-group
when that lowers the layer's reconstruction error, without weight update.

The error of row ``i`` with pruned part ``d_i = W_i * (1 - keep_i)`` is ``d_i^T H d_i`` with
``H = X^T X``. Pruning kept ``j`` and restoring pruned ``k`` of the same group changes it by

    2 w_j g_j + w_j^2 H_jj  -  2 w_k g_k + w_k^2 H_kk  -  2 w_j w_k H_jk,      g = H d_i,

so every candidate swap of every row is scored in one vectorised step. Each round applies the
best improving swap of each row (one per row: swaps of one row interact through ``g``) and
updates ``g`` with two Hessian rows. The work is bounded by ``rounds``; it stops early when no
row improves. The result never has a larger error than the input mask (each swap lowers it),
and ties resolve by position (``argmin`` takes the first), so it is deterministic.
"""

from __future__ import annotations

import torch


def refine_nm_mask(
    weight: torch.Tensor, keep: torch.Tensor, xtx: torch.Tensor, n: int, m: int, rounds: int
) -> tuple[torch.Tensor, int]:
    """Return ``(refined keep mask, number of swaps made)``; each row keeps ``n`` of every ``m``."""
    w = weight.detach().float()
    rows, cols = w.shape
    keep = keep.clone().to(w.device)
    if rounds <= 0 or n in (0, m):
        return keep, 0
    h = xtx.detach().float().to(w.device)
    groups = cols // m
    hdiag = torch.diagonal(h)
    # Within-group blocks of H: [groups, m, m].
    idx = torch.arange(cols, device=w.device).reshape(groups, m)
    hblock = h[idx.unsqueeze(-1), idx.unsqueeze(-2)]
    wg = w.reshape(rows, groups, m)
    cross = -2.0 * wg.unsqueeze(-1) * wg.unsqueeze(-2) * hblock.unsqueeze(0)  # [rows, groups, m(j), m(k)]
    w2h = (w * w * hdiag.unsqueeze(0)).reshape(rows, groups, m)
    g = (w * (~keep)) @ h  # h is symmetric
    row_ids = torch.arange(rows, device=w.device)
    swaps = 0
    for _ in range(rounds):
        wgg = (w * g).reshape(rows, groups, m)
        cost_prune = 2.0 * wgg + w2h  # pruning j (currently kept)
        cost_restore = -2.0 * wgg + w2h  # restoring k (currently pruned)
        kg = keep.reshape(rows, groups, m)
        delta = cost_prune.unsqueeze(-1) + cost_restore.unsqueeze(-2) + cross
        valid = kg.unsqueeze(-1) & (~kg).unsqueeze(-2)
        delta = torch.where(valid, delta, torch.full_like(delta, float("inf")))
        best, flat = delta.reshape(rows, -1).min(dim=1)
        # Relative threshold: ignore float noise (a swap must lower the row's error measurably).
        err = ((w * (~keep)) * g).sum(dim=1)
        improve = best < -1e-6 * err.clamp_min(torch.finfo(w.dtype).tiny)
        if not bool(improve.any()):
            break
        gi = flat // (m * m)
        j = gi * m + (flat // m) % m
        k = gi * m + flat % m
        r = row_ids[improve]
        j, k = j[improve], k[improve]
        keep[r, j] = False
        keep[r, k] = True
        g[r] += w[r, j].unsqueeze(1) * h[j] - w[r, k].unsqueeze(1) * h[k]
        swaps += int(r.numel())
    return keep, swaps
