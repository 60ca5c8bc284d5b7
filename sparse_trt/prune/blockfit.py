"""Block reconstruction: with the masks fixed, fit a decoder layer's kept weights to reference outputs.

Per-linear methods (SparseGPT, its refit) minimise each linear's own output error; errors of
consecutive linears inside a layer (q/k/v -> softmax -> o_proj, gate/up -> SiLU -> down_proj)
still add up through the non-linearities. Here the whole layer is the unit: a few Adam steps on
mini-batches of calibration windows minimise ``||layer(X) - Y_ref||^2 / ||Y_ref||^2`` over the
kept weights only (gradients of pruned positions are zeroed, so the masks cannot change), with a
cosine-decayed learning rate. No gradient flows through other layers; memory is one layer's
activations for one mini-batch.

The caller supplies the forward (which knows the layer's calling convention) and the reference
outputs; this module only optimises. The fit is judged on the full calibration set: when it did
not lower the error, the weights from before the fit are put back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

BatchForward = Callable[[torch.Tensor], torch.Tensor]  # window indices -> layer outputs for them


@dataclass(frozen=True)
class BlockFitSettings:
    steps: int  # optimiser steps per decoder layer (0: off)
    lr: float  # peak Adam step as a fraction of each weight matrix's RMS (cosine decay to 0 over ``steps``)
    batch: int  # calibration windows per step
    target: str  # "model": outputs of the dense model on its own inputs; "layer": dense layer on pruned inputs
    loss: str = "token"  # "token": mean over tokens of each token's relative error; "mse": relative MSE of the whole output


TARGETS = ("model", "layer")
LOSSES = ("token", "mse")


def relative_output_error(out: torch.Tensor, ref: torch.Tensor, loss: str = "mse", chunk: int = 8) -> float:
    """The fit's error measure over a whole set, accumulated in float64, chunked along the first dimension.

    ``"mse"``: ``||out - ref||^2 / ||ref||^2``. ``"token"``: the mean over tokens (all leading
    dimensions) of ``||out_t - ref_t||^2 / ||ref_t||^2`` over the last dimension.
    """
    num = 0.0
    den = 0.0
    for s in range(0, out.shape[0], chunk):
        o = out[s : s + chunk].double()
        r = ref[s : s + chunk].to(o.device).double()
        if loss == "token":
            num += float(_token_errors(o, r).sum())
            den += r[..., 0].numel()
        else:
            num += float((o - r).pow(2).sum())
            den += float(r.pow(2).sum())
    return num / den if den > 0 else 0.0


def _token_errors(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(ref.dtype).tiny
    return (out - ref).pow(2).sum(-1) / ref.pow(2).sum(-1).clamp_min(tiny)


def fit_kept_weights(
    forward: BatchForward,
    reference: torch.Tensor,
    weights: Sequence[torch.nn.Parameter],
    settings: BlockFitSettings,
    generator: torch.Generator,
) -> None:
    """Adam steps on ``weights`` (their zeros stay zero) so that ``forward(idx)`` approaches ``reference[idx]``.

    ``reference`` is ``[nsamples, ...]``; each step draws ``settings.batch`` windows without
    replacement (a fresh permutation per pass over the data, from ``generator``).
    """
    n = reference.shape[0]
    if settings.steps <= 0 or n == 0 or not weights:
        return
    masks = [(w.detach() != 0).to(w.dtype) for w in weights]
    # Adam's steps have the size of the learning rate whatever the gradient's scale, so the rate is
    # relative to each matrix's kept-weight RMS: weights of Gemma 3 are ~6x smaller than SmolLM2's.
    base_lrs = []
    for w, m in zip(weights, masks, strict=True):
        kept = float(m.sum())
        rms = (float(w.detach().double().pow(2).sum()) / kept) ** 0.5 if kept else 0.0
        base_lrs.append(settings.lr * (rms if rms > 0 else 1.0))
    scale = 1.0
    if settings.loss == "mse":
        scale = float(reference.double().pow(2).mean()) or 1.0
    opt = torch.optim.Adam([{"params": [w], "lr": lr} for w, lr in zip(weights, base_lrs, strict=True)])
    batch = max(1, min(settings.batch, n))
    order = torch.randperm(n, generator=generator)
    pos = 0
    for step in range(settings.steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + batch]
        pos += batch
        decay = 0.5 * (1.0 + math.cos(math.pi * step / settings.steps))
        for group, lr in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = lr * decay
        opt.zero_grad(set_to_none=True)
        out = forward(idx)
        ref = reference[idx].to(device=out.device, dtype=out.dtype)
        if settings.loss == "token":  # every token counts alike, whatever its norm (attention sinks are huge)
            loss = _token_errors(out, ref).mean()
        else:
            loss = (out - ref).pow(2).mean() / scale
        loss.backward()
        for w, m in zip(weights, masks, strict=True):
            if w.grad is not None:
                w.grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for w, m in zip(weights, masks, strict=True):
                w.mul_(m)
