"""Mask selection from importance scores. Pure torch, vectorised, deterministic on ties.

All functions take ``scores`` shaped ``[out, in]`` (groups run along ``in``, the reduction
dimension) and return a boolean ``keep`` mask of the same shape. Ties are broken by position
(the lower index is pruned first) via stable sorting, so quantised checkpoints with many equal
magnitudes always give the same mask.
"""

from __future__ import annotations

import torch

from sparse_trt.core.patterns import NM, Pattern, Unstructured

#: rows per sort: the sort's int64 indices are 8 bytes per score, so a wide matrix is masked in row blocks
#: of about this many elements (rows are independent: the mask is the same)
_BLOCK_ELEMENTS = 1 << 22


def _rows_per_block(cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(cols, 1))


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest-scoring entries of every ``m`` consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"input dimension {cols} is not divisible by M={m}")
    keep = torch.ones(rows, cols // m, m, dtype=torch.bool, device=scores.device)
    step = _rows_per_block(cols)
    for r0 in range(0, rows, step):
        groups = scores[r0 : r0 + step].reshape(-1, cols // m, m)
        order = torch.sort(groups, dim=-1, stable=True).indices  # ascending: first (m-n) are pruned
        keep[r0 : r0 + step].scatter_(-1, order[..., : m - n], False)
    return keep.reshape(rows, cols)


def row_keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``floor(in * sparsity)`` lowest-scoring entries of each row."""
    rows, cols = scores.shape
    k = int(cols * sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        step = _rows_per_block(cols)
        for r0 in range(0, rows, step):
            order = torch.sort(scores[r0 : r0 + step], dim=-1, stable=True).indices
            keep[r0 : r0 + step].scatter_(-1, order[:, :k], False)
    return keep


def keep_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    if isinstance(pattern, NM):
        return nm_keep_mask(scores, pattern.n, pattern.m)
    if isinstance(pattern, Unstructured):
        return row_keep_mask(scores, pattern.sparsity)
    raise TypeError(f"unknown pattern {pattern!r}")
