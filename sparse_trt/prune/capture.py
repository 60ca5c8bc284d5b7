"""Capture a decoder stack's calling convention: the first layer's inputs and each layer's keywords.

The embeddings run once per chunk of calibration windows and stop at the first decoder layer (its
inputs are kept); one batch-1 pass with every layer replaced by an identity records the keywords
each layer receives (attention masks, position ids, rotary tables, ...). They are recorded per
layer because some families (Gemma 3, Qwen) alternate sliding and global attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparse_trt.core.errors import NumericalError
from sparse_trt.models.adapters import Adapter


class Stop(Exception):
    """Raised inside a forward to stop it once the needed inputs were seen."""


@dataclass
class LayerInputs:
    """Keywords each decoder layer receives, as batch-1 tensors (expanded per chunk by ``expand_batch``)."""

    kwargs: list[dict[str, Any]]  # one per layer


def parent_and_attr(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, attr = path.split(".")
    obj = model
    for p in parents:
        obj = getattr(obj, p)
    return obj, attr


def move_except_layers(model: nn.Module, adapter: Adapter, device: torch.device) -> None:
    """Move embeddings, rotary tables, final norm, head... to ``device``; decoder layers stay put."""
    parent, attr = parent_and_attr(model, adapter.layers_path)
    layers = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList())
    try:
        model.to(device)
    finally:
        setattr(parent, attr, layers)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def expand_batch(kwargs: dict[str, Any], batch: int, device: torch.device) -> dict[str, Any]:
    """The recorded batch-1 keywords on ``device``, broadcast to ``batch`` windows (views, no copies)."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        if batch > 1 and t.dim() >= 2 and t.shape[0] == 1:
            return t.expand(batch, *t.shape[1:])
        return t

    return map_tensors(kwargs, fn)


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def first(out: Any) -> torch.Tensor:
    """The hidden state of a layer's output (layers return a tensor or a tuple starting with it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise NumericalError(
            f"NaN/Inf found in {what}",
            fix="check the checkpoint's weights, or use --dtype float32 / bfloat16 if float16 overflows",
        )


def capture_inputs(
    model: nn.Module,
    adapter: Adapter,
    calib: torch.Tensor,
    device: torch.device,
    chunk_samples: int,
    alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, LayerInputs]:
    """Return the first layer's inputs ``[nsamples, seqlen, hidden]`` and each layer's keywords.

    Non-layer modules must already be on ``device``; decoder layers are never run (they may be
    weightless skeletons). ``alloc(shape, dtype)`` gives the tensor the inputs are written into
    (default: host memory).
    """
    layers = adapter.layers(model)
    captured: dict[str, Any] = {}

    def grab(_mod, args, kwargs):
        captured["hidden"] = hidden_of(args, kwargs)
        raise Stop

    def embed(ids: torch.Tensor) -> torch.Tensor:
        try:
            model(input_ids=ids.to(device), use_cache=False)
        except Stop:
            pass
        return captured.pop("hidden").detach()

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    inps: torch.Tensor | None = None
    try:
        for s in range(0, calib.shape[0], chunk_samples):
            h = embed(calib[s : s + chunk_samples])
            if inps is None:
                shape = (calib.shape[0], *h.shape[1:])
                inps = alloc(shape, h.dtype) if alloc is not None else torch.empty(shape, dtype=h.dtype)
            inps[s : s + h.shape[0]] = h.to(inps.device)
    finally:
        handle.remove()
    assert inps is not None
    check_finite(inps, "the embeddings' output (layer 0 input)")

    # Record every layer's keywords from one batch-1 pass in which the layers are identities.
    # An identity returns the hidden state alone: every supported family's model reads only the
    # first item of a layer's output (or the tensor itself).
    per_layer: list[dict[str, Any]] = [{} for _ in layers]

    def make_recorder(i: int):
        def recorder(*args, **kwargs):
            per_layer[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if i == len(layers) - 1:
                raise Stop
            return hidden_of(args, kwargs)

        return recorder

    for i, layer in enumerate(layers):
        layer.forward = make_recorder(i)
    try:
        model(input_ids=calib[:1].to(device), use_cache=False)
    except Stop:
        pass
    finally:
        for layer in layers:
            del layer.forward
    return inps, LayerInputs(per_layer)
