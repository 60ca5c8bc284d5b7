"""The layer walker: prune a causal LM one decoder layer at a time.

1. Capture the first decoder layer's inputs for every calibration window and every keyword each
   layer receives (prune/capture.py).
2. Per layer: bring its weights in (``LayerSource``: a no-op for a model in memory, a read of
   that layer's tensors from the safetensors shards when streaming), move it to the compute
   device and prune it (prune/layer.py).
3. Optionally (methods with ``block_steps``), block reconstruction: with the masks fixed, the
   layer's kept weights are fitted to reference outputs (the dense model's own activations, carried
   along as a second stream, or the dense layer applied to the pruned inputs); prune/fitlayer.py.
4. The pruned layer is handed to the checkpointer (resume storage; the streamed output's shards)
   and released; its outputs, computed with pruned weights, become the next layer's inputs.

Only the current layer lives on the compute device; activations live where ``alloc`` puts them
(prune/activations.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sparse_trt.core.manifest import LayerRecord
from sparse_trt.models.adapters import Adapter, layer_targets

from .capture import LayerInputs, capture_inputs, check_finite, move_except_layers, parent_and_attr
from .fitlayer import block_fit_settings, fit_layer
from .layer import Alloc, WalkConfig, prune_layer, replay_layer, resolve_patterns, run_layer

__all__ = [
    "Checkpointer", "LayerInputs", "LayerSource", "ProgressFn", "WalkConfig", "auto_chunk_samples",
    "capture_inputs", "parent_and_attr", "prune_layer", "prune_model", "replay_layer", "resolve_patterns",
]

ProgressFn = Callable[[int, int, float], None]  # (layer index, layer count, seconds) after each layer


class Checkpointer:
    """Interface of resume storage (see prune/resume.py)."""

    done: int

    def load_layer(self, index: int, layer: nn.Module, prefix: str) -> list[LayerRecord]: ...

    def save_layer(self, index: int, layer: nn.Module, prefix: str, records: Sequence[LayerRecord]) -> None: ...


class LayerSource:
    """Where a decoder layer's weights come from. The default: they are already in memory."""

    def load(self, index: int, layer: nn.Module) -> None:
        """Give ``layer`` its weights (before it is run)."""

    def release(self, index: int, layer: nn.Module) -> None:
        """Drop ``layer``'s weights (after it was pruned and saved)."""

    def capture_done(self, model: nn.Module) -> None:
        """The first layer's inputs are captured: what lies outside the decoder layers may be dropped."""


def _layer_device(layer: nn.Module) -> torch.device:
    p = next(layer.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prune_model(
    model: nn.Module,
    adapter: Adapter,
    calib: torch.Tensor,
    cfg: WalkConfig,
    checkpoint: Checkpointer | None = None,
    progress: ProgressFn | None = None,
    source: LayerSource | None = None,
    alloc: Alloc | None = None,
) -> list[LayerRecord]:
    """Prune every decoder layer of ``model`` in place. Returns one record per target linear.

    ``alloc(shape, dtype)`` gives the activation buffers (default: ``cfg.store_device``).
    """
    source = source or LayerSource()
    if alloc is None:
        def alloc(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=cfg.store_device)
    layers = adapter.layers(model)
    home = _layer_device(layers[0])
    nonlayer_home = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    move_except_layers(model, adapter, cfg.device)
    try:
        with torch.no_grad():
            inps, conv = capture_inputs(model, adapter, calib, cfg.device, cfg.chunk_samples, alloc)
    finally:
        move_except_layers(model, adapter, nonlayer_home)
    source.capture_done(model)
    records: list[LayerRecord] = []
    done = checkpoint.done if checkpoint is not None else 0
    fit = block_fit_settings(cfg.options)
    # Block reconstruction fits on the first ``fit_n`` windows (each seen once per pass: steps x
    # batch of them); towards the dense model it carries those windows' dense activations along.
    fit_n = min(inps.shape[0], fit.steps * fit.batch) if fit is not None else 0
    dense_inps = None
    if fit is not None and fit.target == "model":
        dense_inps = alloc((fit_n, *inps.shape[1:]), inps.dtype)
        dense_inps.copy_(inps[:fit_n])
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        prefix = f"{adapter.layers_path}.{i}"
        source.load(i, layer)
        layer.to(cfg.device)
        reference = None
        if fit is not None:  # the dense layer's outputs, computed before it is pruned (or loaded from a checkpoint)
            with torch.no_grad():
                reference = run_layer(
                    layer, dense_inps if dense_inps is not None else inps[:fit_n], conv.kwargs[i],
                    cfg.device, cfg.chunk_samples, alloc,
                )
        if i < done:
            assert checkpoint is not None
            recs = checkpoint.load_layer(i, layer, prefix)
            outs = replay_layer(layer, inps, conv.kwargs[i], cfg, alloc)
        else:
            outs, recs = prune_layer(layer, prefix, inps, conv.kwargs[i], cfg, alloc)
            if fit is not None:
                assert reference is not None
                check_finite(outs, f"the output of decoder layer {i} ({prefix})")
                outs, recs = fit_layer(
                    layer, recs, layer_targets(layer, prefix, cfg.exclude), inps, outs, reference,
                    conv.kwargs[i], cfg, fit, seed=i, alloc=alloc,
                )
        check_finite(outs, f"the output of decoder layer {i} ({prefix})")
        if home.type != "meta":
            layer.to(home)
        if i >= done and checkpoint is not None:
            checkpoint.save_layer(i, layer, prefix, recs)
        source.release(i, layer)
        records.extend(recs)
        inps = outs
        if dense_inps is not None:
            dense_inps = reference
        if progress is not None:
            progress(i, len(layers), time.perf_counter() - t0)
    return records


def auto_chunk_samples(
    config: Any, nsamples: int, seqlen: int, elem_bytes: int, free_bytes: int, layer_bytes: int
) -> int:
    """How many calibration windows one layer forward may take at once without running out of memory."""
    hidden = int(getattr(config, "hidden_size", getattr(config, "n_embd", 1024)))
    inter = int(getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or getattr(config, "n_inner", None) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 16)))
    per_sample = seqlen * (hidden * 8 + inter * 4) * max(elem_bytes, 4) + heads * seqlen * seqlen * 4 * 2
    budget = max(0, int(free_bytes * 0.4) - 2 * layer_bytes)
    return max(1, min(nsamples, budget // max(per_sample, 1)))
