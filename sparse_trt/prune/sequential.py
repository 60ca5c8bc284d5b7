"""The layer walker: prune a causal LM one decoder layer at a time.

1. Capture the first decoder layer's inputs for every calibration window, and every keyword
   each layer receives (attention masks, position ids, rotary embeddings, ...), recorded per
   layer because some families (Gemma 3, Qwen) alternate sliding and global attention.
2. Per layer, on the compute device: forward pre-hooks on the target linears gather input
   statistics. When the whole calibration batch fits in one forward call the hook prunes the
   linear at once and lets the forward continue with the pruned weight: one pass per layer, and
   every linear is calibrated on the outputs of the already pruned linears before it (SparseGPT's
   "true sequential" order). Otherwise the same order is kept with chunked passes, one per group
   of linears that share an input (stopped early once the group is reached), plus one output pass.
3. Optionally (methods with ``block_steps``), block reconstruction: with the masks fixed, the
   layer's kept weights are fitted to reference outputs (the dense model's own activations, carried
   along as a second stream, or the dense layer applied to the pruned inputs); prune/blockfit.py.
4. The layer's outputs, computed with pruned weights, become the next layer's inputs.

Only the current layer lives on the compute device; activations live on ``store_device``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparse_trt.core.errors import InputError, NumericalError
from sparse_trt.core.manifest import LayerRecord
from sparse_trt.core.patterns import NM, Pattern, check_divisible
from sparse_trt.models.adapters import Adapter, Target, layer_targets

from .blockfit import BlockFitSettings, fit_kept_weights, relative_output_error
from .methods import MethodSpec
from .stats import InputStats, StatsAccumulator, relative_error


class _Stop(Exception):
    """Raised inside a forward to stop it once the needed inputs were seen."""


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


@dataclass
class LayerInputs:
    """Captured calling convention of each decoder layer (batch-1 kwargs, expanded per chunk)."""

    kwargs: list[dict[str, Any]]  # one per layer
    tuple_output: bool  # the layer returns a tuple whose first item is the hidden state


ProgressFn = Callable[[int, int, float], None]  # (layer index, layer count, seconds) after each layer


# ---------------------------------------------------------------------------- small helpers


def _parent_and_attr(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *parents, attr = path.split(".")
    obj = model
    for p in parents:
        obj = getattr(obj, p)
    return obj, attr


def move_except_layers(model: nn.Module, adapter: Adapter, device: torch.device) -> None:
    """Move embeddings, rotary tables, final norm, head... to ``device``; decoder layers stay put."""
    parent, attr = _parent_and_attr(model, adapter.layers_path)
    layers = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList())
    try:
        model.to(device)
    finally:
        setattr(parent, attr, layers)


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _expand_batch(kwargs: dict[str, Any], batch: int, device: torch.device) -> dict[str, Any]:
    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        if batch > 1 and t.dim() >= 2 and t.shape[0] == 1:
            return t.expand(batch, *t.shape[1:])
        return t

    return _map_tensors(kwargs, fn)


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------- capture


def capture_inputs(
    model: nn.Module,
    adapter: Adapter,
    calib: torch.Tensor,
    device: torch.device,
    store_device: torch.device,
    chunk_samples: int,
) -> tuple[torch.Tensor, LayerInputs]:
    """Return the first layer's inputs ``[nsamples, seqlen, hidden]`` and each layer's kwargs.

    Non-layer modules must already be on ``device``; decoder layers stay where they are.
    """
    layers = adapter.layers(model)
    home = next(layers[0].parameters()).device
    captured: dict[str, Any] = {}

    def grab(_mod, args, kwargs):
        captured["hidden"] = _hidden_of(args, kwargs)
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    def embed(ids: torch.Tensor) -> torch.Tensor:
        try:
            model(input_ids=ids.to(device), use_cache=False)
        except _Stop:
            pass
        return captured["hidden"]

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        h1 = embed(calib[:1])
        kw1 = captured["kwargs"]
        chunks = [embed(calib[s : s + chunk_samples]).detach().to(store_device) for s in range(0, calib.shape[0], chunk_samples)]
    finally:
        handle.remove()
    inps = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    _check_finite(inps, "the embeddings' output (layer 0 input)")

    # Learn the layers' output convention from a real one-sample call of layer 0.
    layers[0].to(device)
    out0 = layers[0](h1, **kw1)
    layers[0].to(home)
    tuple_output = isinstance(out0, (tuple, list))
    n_out = len(out0) if tuple_output else 1

    # Record every layer's kwargs from one batch-1 pass in which the layers are identities.
    per_layer: list[dict[str, Any]] = [{} for _ in layers]

    def make_recorder(i: int):
        def recorder(*args, **kwargs):
            h = _hidden_of(args, kwargs)
            per_layer[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if i == len(layers) - 1:
                raise _Stop
            return (h,) + (None,) * (n_out - 1) if tuple_output else h

        return recorder

    for i, layer in enumerate(layers):
        layer.forward = make_recorder(i)
    try:
        model(input_ids=calib[:1].to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for layer in layers:
            del layer.forward
    return inps, LayerInputs(per_layer, tuple_output)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise NumericalError(
            f"NaN/Inf found in {what}",
            fix="check the checkpoint's weights, or use --dtype float32 / bfloat16 if float16 overflows",
        )


# ---------------------------------------------------------------------------- pruning one layer


def _run_layer(layer: nn.Module, inps: torch.Tensor, kwargs: dict, conv: LayerInputs, device, chunk: int, out: torch.Tensor | None):
    """Forward all samples through ``layer`` in chunks; returns outputs on ``inps``' device."""
    outs = out if out is not None else torch.empty_like(inps)
    for start in range(0, inps.shape[0], chunk):
        x = inps[start : start + chunk].to(device)
        y = _first(layer(x, **_expand_batch(kwargs, x.shape[0], device)))
        outs[start : start + chunk] = y.to(outs.device)
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
            layer(inps[:1].to(device), **_expand_batch(kwargs, 1, device))
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

    def __init__(self, cfg: WalkConfig, total_rows: int, layer: nn.Module | None = None, prefix: str = ""):
        self.cfg = cfg
        self.total_rows = total_rows
        self.records: dict[str, LayerRecord] = {}
        self.layer, self.prefix = layer, prefix
        # Exact input-channel permutation for N:M (prune/permute.py), when the method's options ask for it.
        self.permutable: dict[str, str] = {}
        if layer is not None and getattr(cfg.options, "permute", False):
            from .permute import permutable_consumers

            self.permutable = {f"{prefix}.{k}": v for k, v in permutable_consumers(layer).items()}

    def permute_group(self, group: list[Target], stats: InputStats) -> tuple[InputStats, torch.Tensor | None]:
        """Permute the inputs of a permutable consumer (and its producers) before pruning it."""
        kind = self.permutable.get(group[0].name) if len(group) == 1 else None
        pattern = self.pattern_of(group[0])
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

    def pattern_of(self, t: Target) -> Pattern | None:
        return self.cfg.layer_patterns.get(t.name, self.cfg.pattern)

    def accumulator(self, in_features: int, device) -> StatsAccumulator:
        m = self.cfg.method
        return StatsAccumulator(
            in_features, norms=m.needs_norms, hessian=True if m.needs_hessian else False,
            sample_rows=0 if m.needs_hessian else self.cfg.sample_rows, device=device,
        )

    def prune_group(self, group: list[Target], stats: InputStats) -> torch.Tensor | None:
        """Prune the group in place; returns the input permutation applied first (None: none)."""
        stats, perm = self.permute_group(group, stats)
        by_pattern: dict[str, tuple[Pattern | None, list[Target]]] = {}
        for t in group:
            p = self.pattern_of(t)
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
    conv: LayerInputs,
    cfg: WalkConfig,
) -> tuple[torch.Tensor, list[LayerRecord]]:
    """Prune one decoder layer in place; return its outputs (computed with pruned weights) and records."""
    targets = layer_targets(layer, prefix, cfg.exclude)
    for t in targets:
        p = cfg.layer_patterns.get(t.name, cfg.pattern)
        if p is not None:
            check_divisible(t.name, t.in_features, p)
    nsamples = inps.shape[0]
    total_rows = nsamples * inps.shape[1]
    pruner = _LayerPruner(cfg, total_rows, layer, prefix)
    if not targets:
        with torch.no_grad():
            return _run_layer(layer, inps, kwargs, conv, cfg.device, cfg.chunk_samples, None), []
    groups = _discover_groups(layer, targets, inps, kwargs, cfg.device)
    dev = cfg.device

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
                _run_layer(layer, inps, kwargs, conv, dev, cfg.chunk_samples, None)
            finally:
                for h in handles:
                    h.remove()
            for g, acc in zip(groups, accs, strict=True):
                pruner.prune_group(g, acc.finish())
            outs = _run_layer(layer, inps, kwargs, conv, dev, cfg.chunk_samples, None)
        elif cfg.chunk_samples >= nsamples:
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
                outs = _run_layer(layer, inps, kwargs, conv, dev, cfg.chunk_samples, None)
            finally:
                for h in handles:
                    h.remove()
        else:
            # Chunked: one statistics pass per group (stopped at the group), then one output pass.
            for g in groups:
                acc = pruner.accumulator(g[0].in_features, dev)

                def hook(_m, args, acc=acc):
                    acc.add(args[0], total_rows)
                    raise _Stop

                h = g[0].module.register_forward_pre_hook(hook)
                try:
                    for start in range(0, nsamples, cfg.chunk_samples):
                        x = inps[start : start + cfg.chunk_samples].to(dev)
                        try:
                            layer(x, **_expand_batch(kwargs, x.shape[0], dev))
                        except _Stop:
                            pass
                finally:
                    h.remove()
                pruner.prune_group(g, acc.finish())
            outs = _run_layer(layer, inps, kwargs, conv, dev, cfg.chunk_samples, None)
    records = [pruner.records[t.name] for t in targets]
    return outs, records


def block_fit_settings(options: Any) -> BlockFitSettings | None:
    """Block-reconstruction settings of a method's options (their ``block_fit()``), or None."""
    block_fit = getattr(options, "block_fit", None)
    return block_fit() if block_fit is not None else None


def _float_kwargs(kwargs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return _map_tensors(kwargs, lambda t: t.to(dtype) if t.is_floating_point() else t)


def fit_layer(
    layer: nn.Module,
    records: list[LayerRecord],
    targets: list[Target],
    inps: torch.Tensor,
    outs: torch.Tensor,
    reference: torch.Tensor,
    kwargs: dict[str, Any],
    conv: LayerInputs,
    cfg: WalkConfig,
    fit: BlockFitSettings,
    seed: int,
) -> tuple[torch.Tensor, list[LayerRecord]]:
    """Block reconstruction of one pruned layer; returns its (new) outputs and updated records.

    ``reference`` holds the target outputs of the first ``len(reference)`` windows of ``inps``;
    the fit and its before/after errors use those windows.

    Only the weights of linears that were pruned are fitted (their zeros stay zeros); linears left
    dense by a plan or ``--exclude``, norms and biases keep their values. The fit runs in float32
    whatever the layer's dtype (its parameters are cast, buffers are left alone); the result is cast
    back, and kept only if it lowers the layer's output error on the fitting windows.
    """
    pruned = {r.name for r in records if r.pattern is not None}
    fitted = [t for t in targets if t.name in pruned]
    n_fit = reference.shape[0]
    before = relative_output_error(outs[:n_fit], reference, fit.loss)
    if not fitted:
        return outs, records
    dev = cfg.device
    params = list(layer.parameters())
    flags = [p.requires_grad for p in params]
    home_dtypes = [p.dtype for p in params]
    work_dtype = torch.promote_types(fitted[0].module.weight.dtype, torch.float32)
    saved = [t.module.weight.detach().clone() for t in fitted]
    for p in params:
        if p.is_floating_point():
            p.data = p.data.to(work_dtype)
    kw = _float_kwargs(kwargs, work_dtype)
    batch = max(1, min(fit.batch, cfg.chunk_samples))

    def forward(idx: torch.Tensor) -> torch.Tensor:
        x = inps[idx].to(device=dev, dtype=work_dtype)
        return _first(layer(x, **_expand_batch(kw, x.shape[0], dev)))

    try:
        for p in params:
            p.requires_grad_(False)
        weights = [t.module.weight for t in fitted]
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            fit_kept_weights(
                forward, reference, weights, dataclasses.replace(fit, batch=batch),
                torch.Generator().manual_seed(seed),
            )
    finally:
        for p, f, d in zip(params, flags, home_dtypes, strict=True):
            p.requires_grad_(f)
            p.grad = None
            p.data = p.data.to(d)
    with torch.no_grad():
        new_outs = _run_layer(layer, inps, kwargs, conv, dev, cfg.chunk_samples, None)
    after = relative_output_error(new_outs[:n_fit], reference, fit.loss)
    if not after < before:  # includes NaN: the fit did not help, put the pruned weights back
        with torch.no_grad():
            for t, w in zip(fitted, saved, strict=True):
                t.module.weight.copy_(w)
        new_outs, after = outs, before
    records = [
        dataclasses.replace(r, block_error_before=before, block_error_after=after) if r.name in pruned else r
        for r in records
    ]
    return new_outs, records


def replay_layer(layer: nn.Module, inps: torch.Tensor, kwargs: dict, conv: LayerInputs, cfg: WalkConfig) -> torch.Tensor:
    """Outputs of an already pruned layer (used when resuming)."""
    with torch.no_grad():
        return _run_layer(layer, inps, kwargs, conv, cfg.device, cfg.chunk_samples, None)


# ---------------------------------------------------------------------------- the walk


class Checkpointer:
    """Interface of resume storage (see prune/resume.py)."""

    done: int

    def load_layer(self, index: int, layer: nn.Module, prefix: str) -> list[LayerRecord]: ...

    def save_layer(self, index: int, layer: nn.Module, prefix: str, records: Sequence[LayerRecord]) -> None: ...


def prune_model(
    model: nn.Module,
    adapter: Adapter,
    calib: torch.Tensor,
    cfg: WalkConfig,
    checkpoint: Checkpointer | None = None,
    progress: ProgressFn | None = None,
) -> list[LayerRecord]:
    """Prune every decoder layer of ``model`` in place. Returns one record per target linear."""
    layers = adapter.layers(model)
    home = next(layers[0].parameters()).device
    move_except_layers(model, adapter, cfg.device)
    try:
        with torch.no_grad():
            inps, conv = capture_inputs(model, adapter, calib, cfg.device, cfg.store_device, cfg.chunk_samples)
    finally:
        move_except_layers(model, adapter, home)
    records: list[LayerRecord] = []
    done = checkpoint.done if checkpoint is not None else 0
    fit = block_fit_settings(cfg.options)
    # Block reconstruction fits on the first ``fit_n`` windows (each seen once per pass: steps x
    # batch of them); towards the dense model it carries those windows' dense activations along.
    fit_n = min(inps.shape[0], fit.steps * fit.batch) if fit is not None else 0
    dense_inps = inps[:fit_n].clone() if fit is not None and fit.target == "model" else None
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        prefix = f"{adapter.layers_path}.{i}"
        layer.to(cfg.device)
        reference = None
        if fit is not None:  # the dense layer's outputs, computed before it is pruned (or loaded from a checkpoint)
            with torch.no_grad():
                reference = _run_layer(
                    layer, dense_inps if dense_inps is not None else inps[:fit_n], conv.kwargs[i], conv,
                    cfg.device, cfg.chunk_samples, None,
                )
        if i < done:
            assert checkpoint is not None
            recs = checkpoint.load_layer(i, layer, prefix)
            outs = replay_layer(layer, inps, conv.kwargs[i], conv, cfg)
        else:
            outs, recs = prune_layer(layer, prefix, inps, conv.kwargs[i], conv, cfg)
            if fit is not None:
                assert reference is not None
                _check_finite(outs, f"the output of decoder layer {i} ({prefix})")
                outs, recs = fit_layer(
                    layer, recs, layer_targets(layer, prefix, cfg.exclude), inps, outs, reference,
                    conv.kwargs[i], conv, cfg, fit, seed=i,
                )
        _check_finite(outs, f"the output of decoder layer {i} ({prefix})")
        layer.to(home)
        if i >= done and checkpoint is not None:
            checkpoint.save_layer(i, layer, prefix, recs)
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
