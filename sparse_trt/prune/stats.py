"""Streaming input statistics for a linear layer, accumulated in float32.

Inputs arrive as ``[..., in]`` activations (any batch shape); only the last dimension matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InputStats:
    """What an algorithm may consult: token count, squared column norms, Hessian, an input sample."""

    count: int
    sq_norms: torch.Tensor | None  # [in]  sum_t x_tj^2
    xtx: torch.Tensor | None  # [in, in]  sum_t x_t x_t^T
    sample: torch.Tensor | None  # [k, in] a deterministic subsample of rows, for error estimates

    def col_norm_sq(self) -> torch.Tensor:
        """Mean squared input per channel, ``||X_j||^2 / N`` (Wanda's scaler)."""
        assert self.sq_norms is not None
        return self.sq_norms / max(self.count, 1)

    def hessian(self) -> torch.Tensor:
        """SparseGPT's ``H = 2 X X^T / n``."""
        assert self.xtx is not None
        return self.xtx * (2.0 / max(self.count, 1))


class StatsAccumulator:
    """Accumulates what a method needs from each chunk of inputs."""

    def __init__(self, in_features: int, *, norms: bool, hessian: bool, sample_rows: int, device: torch.device):
        self.count = 0
        self.sq_norms = torch.zeros(in_features, dtype=torch.float32, device=device) if norms else None
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None
        self.sample_rows = sample_rows
        self._samples: list[torch.Tensor] = []
        self._sampled = 0

    def add(self, x: torch.Tensor, total_rows_hint: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if self.sq_norms is not None or self.xtx is not None:
            xf = x.float()
            if self.sq_norms is not None:
                self.sq_norms += (xf * xf).sum(dim=0)
            if self.xtx is not None:
                self.xtx.addmm_(xf.t(), xf)
        if self.sample_rows and self._sampled < self.sample_rows:
            stride = max(1, total_rows_hint // self.sample_rows)
            take = x[::stride][: self.sample_rows - self._sampled].float().clone()
            self._samples.append(take)
            self._sampled += take.shape[0]
        self.count += x.shape[0]

    def finish(self) -> InputStats:
        sample = torch.cat(self._samples) if self._samples else None
        return InputStats(self.count, self.sq_norms, self.xtx, sample)


def relative_error(w_dense: torch.Tensor, w_sparse: torch.Tensor, stats: InputStats) -> float | None:
    """``||X (W - W')^T||^2 / ||X W^T||^2``: exact from the Hessian if present, else on the sample."""
    wd, ws = w_dense.float(), w_sparse.float()
    if stats.xtx is not None:
        h = stats.xtx
        delta = wd - ws
        num = ((delta @ h) * delta).sum()
        den = ((wd @ h) * wd).sum()
    elif stats.sample is not None:
        x = stats.sample.to(wd.device)
        num = (x @ (wd - ws).t()).pow(2).sum()
        den = (x @ wd.t()).pow(2).sum()
    else:
        return None
    den_f = float(den)
    return float(num) / den_f if den_f > 0 else 0.0
