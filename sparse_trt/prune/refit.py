"""Refit the kept weights with the mask fixed: least squares on the layer's inputs, by conjugate gradients.

SparseGPT's OBS update (and an imposed mask's update) is sequential over columns: a kept weight
left of a pruned one never compensates it. The best kept weights for a fixed mask solve, per
output row ``i`` with kept set ``K_i``,

    min_w  (w - W_i) H (w - W_i)^T   subject to  w_j = 0 for j not in K_i,

a positive definite system on ``K_i``. Conjugate gradients on all rows at once (one GEMM with
``H`` per iteration, step sizes per row) starting from the sequential solution lowers that error
monotonically; ``iters`` bounds the work. ``H`` is dampened like SparseGPT's, so the refit never
chases directions the calibration data does not determine.
"""

from __future__ import annotations

import torch


def refit_kept(
    weight_dense: torch.Tensor, weight_start: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor, iters: int,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Kept weights that better reproduce ``X W_dense^T`` (zeros stay zeros); returns ``[out, in]`` float."""
    w = weight_dense.detach().float()
    x = weight_start.detach().float().clone()
    k = keep.to(w.device).float()
    h = hessian.detach().float().to(w.device).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(percdamp * float(torch.diagonal(h).mean()))
    if iters <= 0:
        return x
    r = ((w - x) @ h) * k
    p = r.clone()
    rs = (r * r).sum(dim=1)
    tiny = torch.finfo(w.dtype).tiny
    for _ in range(iters):
        ap = (p @ h) * k
        denom = (p * ap).sum(dim=1)
        alpha = torch.where(denom > tiny, rs / denom.clamp_min(tiny), torch.zeros_like(rs))
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), ap, value=-1.0)
        rs_new = (r * r).sum(dim=1)
        beta = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = r + beta.unsqueeze(1) * p
        rs = rs_new
    x = x * k
    x[:, dead] = 0.0
    return x
