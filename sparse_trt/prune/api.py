"""The prune job: load -> calibrate -> walk layers -> write OUT (HF checkpoint + sparsity.json) atomically."""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

import sparse_trt
from sparse_trt.core.atomic import atomic_output_dir, check_output_dir, clear_stale_temps
from sparse_trt.core.device import available_memory_bytes, dtype_name
from sparse_trt.core.errors import InputError, InterruptedRun
from sparse_trt.core.lock import output_lock
from sparse_trt.core.manifest import CalibrationSpec, Manifest
from sparse_trt.core.patterns import Pattern, Unstructured
from sparse_trt.data.text import TextSource
from sparse_trt.data.windows import calibration_windows
from sparse_trt.models.adapters import Target, all_targets
from sparse_trt.models.loading import load_model

from .activations import ActivationStore, plan_walk_activations
from .methods import get_method, parse_options
from .resume import DirCheckpointer, content_fingerprint, model_fingerprint, partial_dir
from .sequential import ProgressFn, WalkConfig, auto_chunk_samples, prune_model, resolve_patterns
from .streamout import DEFAULT_SHARD_BYTES, StreamingCheckpointer, save_model_configs, write_streamed_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneRequest:
    model: str
    out: Path
    method: str = "sparsegpt"
    pattern: Pattern | None = None
    calib: TextSource = TextSource("wiki")
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None
    exclude: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    layer_patterns: Mapping[str, Pattern | None] = field(default_factory=dict)
    plan_source: str | None = None
    plan_model: str | None = None  # the model the plan was made for, for messages
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    chunk_samples: int | None = None
    # Streaming (models larger than memory): decoder layers are read from the safetensors shards one at
    # a time and written straight into the output's shards; False loads the whole model (the reference path).
    streaming: bool = True
    max_memory: int | None = None  # host bytes the activations may take (default: half the available memory)
    shard_bytes: int | None = None  # output shard size (default 5 GB)


@dataclass
class PruneOutcome:
    out: Path
    manifest: Manifest
    resumed_layers: int


def check_excludes(exclude: tuple[str, ...], targets: list[Target], prefix: str) -> None:
    """Every --exclude glob must match some target linear; a typo is an error that lists near names."""
    import difflib
    import fnmatch
    import re

    names = [t.name for t in targets]
    short = sorted({re.sub(rf"^{re.escape(prefix)}\.\d+\.", "", n) for n in names})
    for pat in exclude:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names) and not any(fnmatch.fnmatchcase(n, pat) for n in short):
            near = difflib.get_close_matches(pat.strip("*."), short, n=4, cutoff=0.3) or short[:6]
            raise InputError(f"--exclude '{pat}' matches no prunable linear of this model",
                             fix=f"linears are named like {', '.join(near)} (full: {names[0]}); e.g. --exclude '*.{near[0]}'")


def check_fractions(targets: list[Target], patterns: Mapping[str, Pattern | None], default: Pattern | None) -> None:
    """An unstructured fraction must zero at least one weight per row, or it silently prunes nothing."""
    for t in targets:
        p = patterns.get(t.name, default)
        if isinstance(p, Unstructured) and int(t.in_features * p.sparsity) < 1:
            raise InputError(
                f"--pattern {p} zeroes no weight in a row of '{t.name}' ({t.in_features} inputs): it would prune nothing",
                fix=f"use a fraction of at least 1/{t.in_features} (e.g. --pattern 0.5)",
            )


def run_prune(req: PruneRequest, progress: ProgressFn | None = None, on_stage=None) -> PruneOutcome:
    """Run the whole prune job. ``on_stage(str)`` is told about each stage (for the CLI's status line).

    OUT is locked for the whole run (a second run on it fails naming this one's PID). A failure that is
    not an interruption removes the resume folder this run made; an interruption (Ctrl-C, SIGTERM)
    keeps it for --resume.
    """
    check_output_dir(req.out, req.overwrite, inputs=(req.model,))
    partial = partial_dir(req.out)
    with output_lock(req.out, "output folder"):
        clear_stale_temps(req.out, remove=req.overwrite or req.resume)
        # progress an earlier run left is deleted on our failure only when --overwrite discards it anyway
        kept = partial.is_dir() and (req.resume or not req.overwrite)
        try:
            return _run_prune(req, progress, on_stage)
        except InterruptedRun:
            raise
        except KeyboardInterrupt:
            if partial.is_dir():
                raise InterruptedRun(f"interrupted; progress kept in '{partial}'",
                                     fix="re-run the same command with --resume to continue") from None
            raise
        except BaseException:
            if not kept and partial.is_dir():
                import shutil

                shutil.rmtree(partial, ignore_errors=True)
            raise


def _run_prune(req: PruneRequest, progress: ProgressFn | None = None, on_stage=None) -> PruneOutcome:
    stage = on_stage or (lambda _s: None)
    if req.pattern is None:
        raise InputError("no sparsity pattern given", fix="pass --pattern 2:4 (or N:M, or a fraction)")
    check_output_dir(req.out, req.overwrite, inputs=(req.model,))
    if req.nsamples < 1:
        raise InputError(f"--nsamples {req.nsamples} must be at least 1", fix="e.g. --nsamples 128")
    if req.chunk_samples is not None and req.chunk_samples < 1:
        raise InputError(f"--chunk-samples {req.chunk_samples} must be at least 1",
                         fix="leave it out (as many as fit in memory), or give a positive count")
    method = get_method(req.method)
    options = parse_options(method, req.options)
    t_start = time.perf_counter()

    stage(f"loading {req.model}")
    loaded = load_model(req.model, dtype=req.dtype, trust_remote_code=req.trust_remote_code, streaming=req.streaming)
    model, adapter = loaded.model, loaded.adapter
    limit = loaded.context_limit()
    if limit is not None and req.seqlen > limit:
        raise InputError(
            f"--seqlen {req.seqlen} exceeds the model's context of {limit} tokens", fix=f"use --seqlen {limit} or less"
        )

    check_excludes(req.exclude, all_targets(model, adapter), adapter.layers_path)
    targets = all_targets(model, adapter, req.exclude)
    if not targets:
        raise InputError("every prunable linear is excluded", fix="loosen --exclude")
    check_fractions(targets, req.layer_patterns, req.pattern)
    names = {t.name for t in targets}
    unknown = sorted(set(req.layer_patterns) - {t.name for t in all_targets(model, adapter)})
    if unknown:
        made_for = f" (made for {req.plan_model})" if req.plan_model else ""
        raise InputError(
            f"plan {req.plan_source or ''}{made_for} names linears that {req.model} does not have: {unknown[:5]}",
            fix=f"make the plan for this model with `sparse-trt plan {req.model}`",
        )
    resolve_patterns(targets, req.pattern, req.layer_patterns)  # every pattern fits its linear
    excluded = sorted(t.name for t in all_targets(model, adapter) if t.name not in names)

    stage(f"tokenising calibration text ({req.calib.name})")
    calib = calibration_windows(loaded.tokenizer, req.calib, req.nsamples, req.seqlen, req.seed, loaded.add_bos())

    dtype = next(model.parameters()).dtype
    layer0 = adapter.layers(model)[0]
    layer_bytes = sum(p.numel() * p.element_size() for p in layer0.parameters())
    chunk = req.chunk_samples or auto_chunk_samples(
        model.config, req.nsamples, req.seqlen, torch.finfo(dtype).bits // 8, available_memory_bytes(req.device), layer_bytes
    )
    acts = plan_walk_activations(model.config, req.nsamples, req.seqlen, dtype, options, req.device, req.max_memory,
                                 partial_dir(req.out) / "activations")
    store = acts.device if acts.place == "device" else torch.device("cpu")
    cfg = WalkConfig(
        method=method,
        options=options,
        pattern=req.pattern,
        device=req.device,
        store_device=store,
        chunk_samples=chunk,
        exclude=req.exclude,
        layer_patterns=dict(req.layer_patterns),
    )
    fingerprint = {
        "model": req.model,
        "method": req.method,
        "options": dict(sorted(req.options.items())),
        "pattern": str(req.pattern),
        "calib": req.calib.name,
        "nsamples": req.nsamples,
        "seqlen": req.seqlen,
        "seed": req.seed,
        "dtype": dtype_name(dtype),
        "exclude": list(req.exclude),
        "layer_patterns": {k: (None if v is None else str(v)) for k, v in sorted(req.layer_patterns.items())},
        "chunk_samples": chunk,
        "device_type": req.device.type,
        "layer_store": "streamed" if loaded.layers is not None else "in-memory",
        # content, not just paths: replacing the weights or the calibration file at the same path is noticed
        "model_files": model_fingerprint(loaded.source, model.config),
        "calib_files": content_fingerprint(req.calib.path),
    }
    if loaded.layers is not None:
        ck = StreamingCheckpointer.open(req.out, fingerprint, req.resume, req.overwrite).bind(adapter)
    else:
        ck = DirCheckpointer.open(req.out, fingerprint, req.resume, req.overwrite)
    resumed = ck.done
    stage("pruning")
    torch.manual_seed(req.seed)
    try:
        t_walk = time.perf_counter()
        records = prune_model(model, adapter, calib, cfg, ck, progress, source=loaded.layers,
                              alloc=ActivationStore(acts).alloc)
        walk_s = time.perf_counter() - t_walk
    except KeyboardInterrupt:
        raise InterruptedRun(
            f"interrupted after {ck.done} finished decoder layer(s); progress kept in '{ck.root}'",
            fix="re-run the same command with --resume to continue",
        ) from None

    manifest = Manifest(
        tool="sparse_trt",
        version=sparse_trt.__version__,
        method=req.method,
        method_options={k: getattr(options, k) for k in getattr(options, "__dataclass_fields__", {})},
        pattern=str(req.pattern),
        model={
            "source": req.model,
            "model_type": model.config.model_type,
            "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
            "family": adapter.family,
            "num_layers": len(adapter.layers(model)),
            "plan": req.plan_source,
        },
        calibration=CalibrationSpec(req.calib.name, req.nsamples, req.seqlen, req.seed),
        layers=tuple(records),
        excluded=tuple(excluded),
        timings={
            "total_s": round(time.perf_counter() - t_start, 3),
            "prune_s": round(walk_s, 3),
            "resumed_layers": resumed,
            "chunk_samples": chunk,
        },
        device=str(req.device),
        dtype=dtype_name(dtype),
        memory={**acts.record(), "streamed": loaded.layers is not None},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    stage(f"writing {req.out}")
    if getattr(model.config, "architectures", None) is None:
        model.config.architectures = [type(model).__name__]
    with atomic_output_dir(req.out, overwrite=req.overwrite) as tmp:
        if isinstance(ck, StreamingCheckpointer):
            write_streamed_output(tmp, model, adapter, ck, len(adapter.layers(model)),
                                  req.shard_bytes or DEFAULT_SHARD_BYTES, source=loaded.layers)
            save_model_configs(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        manifest.save(tmp)
    ck.discard()
    return PruneOutcome(Path(req.out), manifest, resumed)
