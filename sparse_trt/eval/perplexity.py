"""Perplexity over non-overlapping windows (BOS per family), accumulated in float32."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sparse_trt.core.errors import NumericalError


@dataclass(frozen=True)
class PerplexityResult:
    model: str
    data: str
    seqlen: int
    windows: int
    tokens: int  # predicted tokens
    nll: float  # mean negative log-likelihood per predicted token
    perplexity: float
    bos: bool

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    skip_first: int = 0,
) -> tuple[float, int]:
    """Mean NLL and number of predicted tokens over ``windows [n, seqlen]``.

    ``skip_first`` positions are not scored as targets (1 when the window starts with a BOS the
    model is not asked to predict; the BOS itself is never a target since targets start at 1).
    """
    model.eval()
    total = 0.0
    count = 0
    n = windows.shape[0]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            ids = windows[start : start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            logits = logits[:, skip_first:-1, :].float()
            target = ids[:, skip_first + 1 :]
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            if not torch.isfinite(loss):
                raise NumericalError(
                    f"the loss of window {start} is not finite", fix="evaluate in float32 (--dtype float32)"
                )
            total += float(loss)
            count += target.numel()
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return total / count, count


def to_result(model_name: str, data: str, windows: torch.Tensor, nll: float, tokens: int, bos: bool) -> PerplexityResult:
    return PerplexityResult(model_name, data, int(windows.shape[1]), int(windows.shape[0]), tokens, nll, math.exp(nll), bos)
