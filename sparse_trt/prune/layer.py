"""Prune one decoder layer: gather each linear's input statistics, apply the method, record the result.

Forward pre-hooks on the target linears gather input statistics. When the whole calibration batch
fits in one forward call the hook prunes the linear at once and lets the forward continue with the
pruned weight: one pass per layer, and every linear is calibrated on the outputs of the already
pruned linears before it (SparseGPT's "true sequential" order). Otherwise the same order is kept
with chunked passes, one per group of linears that share an input (stopped early once the group is
reached), plus one output pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparse_trt.core.errors import InputError, NumericalError
from sparse_trt.core.manifest import LayerRecord
from sparse_trt.core.patterns import NM, Pattern, check_divisible
from sparse_trt.models.adapters import Target, layer_targets

from .capture import Stop, expand_batch, first
from .methods import MethodSpec
from .stats import InputStats, StatsAccumulator, relative_error

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]  # where a layer's outputs are written


@dataclass(frozen=True)
class WalkConfig:
    method: MethodSpec
    options: Any
    pattern: Pattern
    device: torch.device
    store_device: torch.device
    chunk_samples: int
    exclude: tuple[str, ...] = ()
    # name -> pattern (None: keep dense). Names absent from the map use ``pattern``.
    layer_patterns: Mapping[str, Pattern | None] = field(default_factory=dict)
    sample_rows: int = 2048
    # True (SparseGPT's "true sequential"): each linear is calibrated on the outputs of the already
    # pruned linears before it in the layer. False: every linear on the dense layer's own inputs
    # (one statistics pass, then all are pruned); kept for the ablation in benchmarks/ablation.py.
    true_sequential: bool = True


def resolve_patterns(targets: list[Target], pattern: Pattern, layer_patterns: Mapping[str, Pattern | None]) -> dict[str, Pattern | None]:
    """Each target's pattern (None: kept dense), checked once against its input size."""
    out: dict[str, Pattern | None] = {}
    for t in targets:
        p = layer_patterns.get(t.name, pattern)
        if p is not None:
            check_divisible(t.name, t.in_features, p)
        out[t.name] = p
    return out


def run_layer(layer: nn.Module, inps: torch.Tensor, kwargs: dict, device: torch.device, chunk: int,
              alloc: Alloc | None = None) -> torch.Tensor:
    """Forward all windows through ``layer`` in chunks; the outputs go to ``alloc`` (default: like ``inps``).

    The output buffer is allocated once the first chunk's forward has returned, so it is not resident
    beside that forward's intermediates (with one chunk for all windows: the peak is lower by one
    activation buffer).
    """
    outs: torch.Tensor | None = None
    for start in range(0, inps.shape[0], chunk):
        x = inps[start : start + chunk].to(device)
        y = first(layer(x, **expand_batch(kwargs, x.shape[0], device)))
        del x
        if outs is None:
            outs = alloc(tuple(inps.shape), inps.dtype) if alloc is not None else torch.empty_like(inps)
        outs[start : start + chunk] = y.to(outs.device)
        del y
    assert outs is not None, "run_layer needs at least one window"
    return outs


def _discover_groups(layer: nn.Module, targets: list[Target], inps, kwargs, device) -> list[list[Target]]:
    """Groups of targets that receive the same input tensor, in execution order (one-sample probe)."""
    # Inputs are kept alive during the probe so that a freed buffer's address cannot be reused
    # by a later, different input (which would merge unrelated linears into one group).
    calls: list[tuple[Target, torch.Tensor]] = []
    handles = []
    for t in targets:
        def hook(_m, args, t=t):
            calls.append((t, args[0]))
        handles.append(t.module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            layer(inps[:1].to(device), **expand_batch(kwargs, 1, device))
    finally:
        for h in handles:
            h.remove()
    seen: set[str] = set()
    groups: list[list[Target]] = []
    last: tuple | None = None
    for t, x in calls:
        if t.name in seen:
            continue
        seen.add(t.name)
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
        if groups and key == last:
            groups[-1].append(t)
        else:
            groups.append([t])
        last = key
    missing = [t.name for t in targets if t.name not in seen]
    if missing:
        raise InputError(
            f"linear(s) {missing} received no input during a forward pass, so they cannot be calibrated",
            fix="exclude them with --exclude",
        )
    return groups


class _LayerPruner:
    """Applies the method to groups of targets and produces manifest records."""

    def __init__(self, cfg: WalkConfig, patterns: Mapping[str, Pattern | None], layer: nn.Module, prefix: str):
        self.cfg = cfg
        self.patterns = patterns
        self.records: dict[str, LayerRecord] = {}
        self.layer = layer
        # Exact input-channel permutation for N:M (prune/permute.py), when the method's options ask for it.
        self.permutable: dict[str, str] = {}
        if getattr(cfg.options, "permute", False):
            from .permute import permutable_consumers

            self.permutable = {f"{prefix}.{k}": v for k, v in permutable_consumers(layer).items()}

    def permute_group(self, group: list[Target], stats: InputStats) -> tuple[InputStats, torch.Tensor | None]:
        """Permute the inputs of a permutable consumer (and its producers) before pruning it."""
        kind = self.permutable.get(group[0].name) if len(group) == 1 else None
        pattern = self.patterns[group[0].name]
        if kind is None or not isinstance(pattern, NM):
            return stats, None
        from .permute import choose_and_apply

        norms = stats.sq_norms if stats.sq_norms is not None else torch.diagonal(stats.xtx)
        scores = group[0].weight_out_in().abs().float() * norms.float().sqrt().unsqueeze(0)
        perm = choose_and_apply(self.layer, kind, scores, pattern.n, pattern.m, trials=512, seed=0)
        if perm is None:
            return stats, None
        p = perm.to(norms.device)
        return InputStats(
            stats.count,
            None if stats.sq_norms is None else stats.sq_norms[p],
            None if stats.xtx is None else stats.xtx[p][:, p],
            None if stats.sample is None else stats.sample[:, p],
        ), perm

    def accumulator(self, in_features: int, device) -> StatsAccumulator:
        m = self.cfg.method
        return StatsAccumulator(
            in_features, norms=m.needs_norms, hessian=bool(m.needs_hessian),
            sample_rows=0 if m.needs_hessian else self.cfg.sample_rows, device=device,
        )

    def prune_group(self, group: list[Target], stats: InputStats) -> torch.Tensor | None:
        """Prune the group in place; returns the input permutation applied first (None: none)."""
        stats, perm = self.permute_group(group, stats)
        by_pattern: dict[str, tuple[Pattern | None, list[Target]]] = {}
        for t in group:
            p = self.patterns[t.name]
            by_pattern.setdefault(str(p), (p, []))[1].append(t)
        for pattern, members in by_pattern.values():
            t0 = time.perf_counter()
            if pattern is None:
                for t in members:
                    w = t.weight_out_in()
                    self.records[t.name] = LayerRecord(
                        t.name, tuple(t.module.weight.shape), t.in_dim, None,
                        float((w == 0).float().mean()), 0.0, None, 0, 0.0,
                    )
                continue
            dense = [t.weight_out_in().clone() for t in members]
            for t, w in zip(members, dense, strict=True):
                if not torch.isfinite(w).all():
                    raise NumericalError(f"NaN/Inf in the weight of '{t.name}'", fix="check the checkpoint")
            if self.cfg.method.fuse_shared_input and len(members) > 1:
                res = self.cfg.method.fn(torch.cat(dense), stats, pattern, self.cfg.options)
                sizes = [w.shape[0] for w in dense]
                new_ws = list(torch.split(res.weight, sizes))
                infos = [res.info] * len(members)
            else:
                new_ws, infos = [], []
                for w in dense:
                    res = self.cfg.method.fn(w, stats, pattern, self.cfg.options)
                    new_ws.append(res.weight)
                    infos.append(res.info)
            secs = (time.perf_counter() - t0) / len(members)
            for t, w_old, w_new, info in zip(members, dense, new_ws, infos, strict=True):
                if not torch.isfinite(w_new).all():
                    raise NumericalError(
                        f"pruning produced NaN/Inf in '{t.name}'",
                        fix="raise the dampening (--opt damp=0.1) or use more calibration samples",
                    )
                t.set_weight_out_in(w_new.to(w_old.dtype))
                w_final = t.weight_out_in()
                self.records[t.name] = LayerRecord(
                    name=t.name,
                    shape=tuple(t.module.weight.shape),
                    in_dim=t.in_dim,
                    pattern=str(pattern),
                    sparsity=float((w_final == 0).float().mean()),
                    rel_error=relative_error(w_old, w_final, stats),
                    damp=info.get("damp"),
                    damp_retries=int(info.get("damp_retries", 0)),
                    seconds=round(secs, 4),
                )
        return perm


def prune_layer(
    layer: nn.Module,
    prefix: str,
    inps: torch.Tensor,
    kwargs: dict[str, Any],
    cfg: WalkConfig,
    alloc: Alloc | None = None,
) -> tuple[torch.Tensor, list[LayerRecord]]:
    """Prune one decoder layer in place; return its outputs (computed with pruned weights) and records."""
    targets = layer_targets(layer, prefix, cfg.exclude)
    dev, chunk = cfg.device, cfg.chunk_samples
    if not targets:
        with torch.no_grad():
            return run_layer(layer, inps, kwargs, dev, chunk, alloc), []
    pruner = _LayerPruner(cfg, resolve_patterns(targets, cfg.pattern, cfg.layer_patterns), layer, prefix)
    nsamples = inps.shape[0]
    total_rows = nsamples * inps.shape[1]
    groups = _discover_groups(layer, targets, inps, kwargs, dev)

    with torch.no_grad():
        if not cfg.true_sequential:
            # Every group's statistics from one pass over the unpruned layer, then all are pruned.
            accs = [pruner.accumulator(g[0].in_features, dev) for g in groups]
            handles = []
            for g, acc in zip(groups, accs, strict=True):
                def hook(_m, args, acc=acc):
                    acc.add(args[0], total_rows)
                handles.append(g[0].module.register_forward_pre_hook(hook))
            try:
                run_layer(layer, inps, kwargs, dev, chunk, alloc)
            finally:
                for h in handles:
                    h.remove()
            for g, acc in zip(groups, accs, strict=True):
                pruner.prune_group(g, acc.finish())
            outs = run_layer(layer, inps, kwargs, dev, chunk, alloc)
        elif chunk >= nsamples:
            # One pass: each group's first member gathers stats and prunes the whole group in place.
            handles = []
            for g in groups:
                def hook(_m, args, g=g):
                    acc = pruner.accumulator(g[0].in_features, dev)
                    acc.add(args[0], total_rows)
                    perm = pruner.prune_group(g, acc.finish())
                    if perm is not None:  # the consumer's columns moved: feed it the permuted input
                        return (args[0][..., perm.to(args[0].device)], *args[1:])
                    return None
                handles.append(g[0].module.register_forward_pre_hook(hook))
            try:
                outs = run_layer(layer, inps, kwargs, dev, chunk, alloc)
            finally:
                for h in handles:
                    h.remove()
        else:
            # Chunked: one statistics pass per group (stopped at the group), then one output pass.
            for g in groups:
                acc = pruner.accumulator(g[0].in_features, dev)

                def hook(_m, args, acc=acc):
                    acc.add(args[0], total_rows)
                    raise Stop

                h = g[0].module.register_forward_pre_hook(hook)
                try:
                    for start in range(0, nsamples, chunk):
                        x = inps[start : start + chunk].to(dev)
                        try:
                            layer(x, **expand_batch(kwargs, x.shape[0], dev))
                        except Stop:
                            pass
                finally:
                    h.remove()
                pruner.prune_group(g, acc.finish())
            outs = run_layer(layer, inps, kwargs, dev, chunk, alloc)
    records = [pruner.records[t.name] for t in targets]
    return outs, records


def replay_layer(layer: nn.Module, inps: torch.Tensor, kwargs: dict, cfg: WalkConfig, alloc: Alloc | None = None) -> torch.Tensor:
    """Outputs of an already pruned layer (used when resuming)."""
    with torch.no_grad():
        return run_layer(layer, inps, kwargs, cfg.device, cfg.chunk_samples, alloc)
