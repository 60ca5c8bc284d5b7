"""Sensitivity-aware sparsity plans: which linears stay dense (or at a gentler pattern).

``make_plan`` prunes the model once with the chosen method and pattern (and once more with the
fallback pattern, if one is given), ranks the linears by damage per unit of speed gained, and
picks how many of the worst go to the fallback:

* damage of a linear = its layer reconstruction error (``rel_error`` of the walker's records);
* speed gained = its GEMM work (out x in) times ``1 - 1/speedup``, the speedup measured for its
  shape by ``sparse-trt bench gemm`` when a probe file is given (else the same for all);
* ``keep_dense=K`` sends the K worst to the fallback; a perplexity budget finds the smallest K
  that meets it by bisection on held-out windows, swapping the pruned / fallback / dense weights
  already computed (no re-pruning per candidate). That estimate ignores that later layers would
  be calibrated on slightly different inputs; ``prune --plan`` re-runs the walker exactly.

The plan file is JSON (``format``/``version``, model identity, per-linear pattern or null =
dense) and is what ``sparse-trt prune --plan`` reads via :func:`load_plan`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import sparse_trt
from sparse_trt.core.atomic import atomic_write_text, check_output_file
from sparse_trt.core.errors import InputError
from sparse_trt.core.patterns import NM, Pattern, check_divisible, parse_pattern
from sparse_trt.data.text import TextSource
from sparse_trt.data.windows import calibration_windows, eval_windows

PLAN_FORMAT = "sparse_trt.plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    model: dict[str, Any]  # source, model_type, family, architecture, num_layers
    pattern: str
    linears: dict[str, str | None]  # name -> pattern string, or None = dense
    method: str = "sparsegpt"
    fallback: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # ranking, estimate, budget, calibration

    def layer_patterns(self) -> dict[str, Pattern | None]:
        return {k: (None if v is None else parse_pattern(v)) for k, v in self.linears.items()}

    def model_name(self) -> str:
        return str(self.model.get("source", "?"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "tool": f"sparse_trt {sparse_trt.__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": self.model,
            "method": self.method,
            "pattern": self.pattern,
            "fallback": self.fallback,
            "linears": self.linears,
            **self.details,
        }

    def prune_settings(self, method: str | None, options: Mapping[str, str]) -> tuple[str, dict[str, str], str | None]:
        """What ``prune --plan`` runs: (method, options, note).

        Without a method of its own, prune uses the plan's method with the options the plan was measured
        with (unless options are given); a different method is allowed, with a note that the plan's
        estimate may not carry over.
        """
        if method is None:
            plan_options = self.details.get("options") or {}
            return self.method, dict(options) if options else {str(k): str(v) for k, v in plan_options.items()}, None
        note = None
        if method != self.method:
            note = f"the plan was made with {self.method}; pruning with {method} (its estimate may not carry over)"
        return method, dict(options), note

    def save(self, path: Path) -> Path:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)


def load_plan(path: Path | str) -> Plan:
    """Read and validate a plan file; every problem is an InputError naming the file."""
    p = Path(path)
    fix = "write the plan with `sparse-trt plan MODEL -o PLAN.json`"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"plan file '{p}' does not exist", fix=fix) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"plan file '{p}' is not readable JSON ({e})", fix=fix) from None
    if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
        raise InputError(f"'{p}' is not a sparse_trt plan (format != {PLAN_FORMAT!r})", fix=fix)
    version = d.get("version")
    if not isinstance(version, int) or version > PLAN_VERSION:
        raise InputError(
            f"plan '{p}' has version {version!r}; this sparse_trt reads versions <= {PLAN_VERSION}",
            fix="upgrade sparse_trt or re-create the plan",
        )
    linears, model = d.get("linears"), d.get("model")
    if not isinstance(linears, dict) or not isinstance(model, dict) or not isinstance(d.get("pattern"), str):
        raise InputError(f"plan '{p}' lacks 'model', 'pattern' or a 'linears' object", fix=fix)
    for name, pat in linears.items():
        if pat is not None:
            try:
                parse_pattern(pat)
            except InputError as e:
                raise InputError(f"plan '{p}': linear '{name}' has an invalid pattern: {e.message}", fix=fix) from None
    details = {k: v for k, v in d.items() if k not in ("format", "version", "tool", "created", "model", "method",
                                                       "pattern", "fallback", "linears")}
    return Plan(model=model, pattern=d["pattern"], linears=dict(linears), method=str(d.get("method", "?")),
                fallback=d.get("fallback"), details=details)


# ------------------------------------------------------------------------------- selection


def gemm_speedups(rows: Iterable[tuple[Sequence[int], float | None]]) -> dict[tuple[int, int], float]:
    """``(out, in) -> measured 2:4 speedup`` (median over token counts) from GEMM probe rows.

    ``rows`` are ``(shape, speedup)`` of the probe rows that ran (``sparse-trt bench gemm`` results; the
    caller reads that file, so this stage does not depend on the benchmark package).
    """
    by_shape: dict[tuple[int, int], list[float]] = {}
    for shape, speedup in rows:
        if speedup is not None:
            by_shape.setdefault((int(shape[0]), int(shape[1])), []).append(float(speedup))
    return {k: sorted(v)[len(v) // 2] for k, v in by_shape.items()}


def rank_linears(
    errors: Mapping[str, float], shapes: Mapping[str, tuple[int, int]], speedups: Mapping[tuple[int, int], float] | None
) -> list[dict[str, Any]]:
    """Linears ordered from the first to leave sparse (most damage per speed gained) to the last."""
    rows = []
    for i, (name, err) in enumerate(errors.items()):
        out_f, in_f = shapes[name]
        s = (speedups or {}).get((out_f, in_f), 1.6 if not speedups else None)
        gain = 0.0 if s is None else max(0.0, 1.0 - 1.0 / s) * out_f * in_f
        ratio = math.inf if gain <= 0 else err / gain
        rows.append({"name": name, "rel_error": err, "speedup": s, "gain": gain, "_ratio": ratio, "_pos": i})
    rows.sort(key=lambda r: (-r["_ratio"], r["_pos"]))
    for r in rows:
        del r["_ratio"], r["_pos"]
    return rows


def choose_count(ppl_of: Callable[[int], float], n: int, target: float, dense_fallback: bool) -> tuple[int, dict[int, float]]:
    """Smallest K (linears sent to the fallback, in rank order) with ``ppl_of(K) <= target``, by bisection.

    Raises InputError with the best reachable perplexity when no K that still prunes something fits.
    """
    seen: dict[int, float] = {}

    def f(k: int) -> float:
        if k not in seen:
            seen[k] = ppl_of(k)
        return seen[k]

    if f(0) <= target:
        return 0, seen
    hi = n - 1 if dense_fallback else n  # all-dense would meet any budget but prunes nothing
    if hi < 1 or f(hi) > target:
        best = min(seen.values())
        what = f"{hi} of {n} linears at the fallback" if hi else "every linear pruned"
        raise _Unreachable(best, what, seen)
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, seen


class _Unreachable(Exception):
    def __init__(self, best: float, what: str, seen: dict[int, float]):
        self.best, self.what, self.seen = best, what, seen


# ------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class PlanRequest:
    model: str
    out: Path
    method: str = "sparsegpt"
    pattern: Pattern = NM(2, 4)
    fallback: Pattern | None = None  # None: dense
    budget_ppl: float | None = None  # allowed perplexity increase in percent
    keep_dense: int | None = None
    gemm_speedups: Mapping[tuple[int, int], float] | None = None  # measured per (out, in) shape; None: uniform
    gemm_source: str | None = None  # where the speedups came from, for the plan's record
    calib: TextSource = TextSource("wiki")
    eval_data: TextSource = TextSource("wiki")
    nsamples: int = 32
    seqlen: int = 512
    eval_windows: int = 8
    seed: int = 0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False


def make_plan(req: PlanRequest, on_stage: Callable[[str], None] | None = None) -> Plan:
    from sparse_trt.eval.perplexity import perplexity
    from sparse_trt.models.adapters import all_targets
    from sparse_trt.models.loading import load_model
    from sparse_trt.prune.methods import get_method, parse_options
    from sparse_trt.prune.sequential import WalkConfig, prune_model

    stage = on_stage or (lambda _s: None)
    if (req.budget_ppl is None) == (req.keep_dense is None):
        raise InputError("give exactly one of --budget-ppl and --keep-dense", fix="e.g. --budget-ppl +5% or --keep-dense 8")
    if req.budget_ppl is not None and req.budget_ppl < 0:
        raise InputError(f"--budget-ppl {req.budget_ppl:+g}% is negative: pruning never lowers perplexity here",
                         fix="give an allowed increase, e.g. --budget-ppl +5%")
    check_output_file(req.out, req.overwrite, "plan file", inputs=(req.model,))
    method = get_method(req.method)
    options = parse_options(method, req.options)
    speedups = dict(req.gemm_speedups) if req.gemm_speedups is not None else None

    stage(f"loading {req.model}")
    loaded = load_model(req.model, dtype=req.dtype)
    model, adapter = loaded.model, loaded.adapter
    limit = loaded.context_limit()
    if limit is not None and req.seqlen > limit:
        raise InputError(f"--seqlen {req.seqlen} exceeds the model's context of {limit} tokens", fix=f"use --seqlen {limit} or less")
    targets = all_targets(model, adapter)
    n = len(targets)
    if req.keep_dense is not None and not (0 <= req.keep_dense <= n):
        raise InputError(f"--keep-dense {req.keep_dense} is outside 0..{n} (this model has {n} prunable linears)",
                         fix=f"give a count between 0 and {n}")
    for t in targets:
        for p in (req.pattern, req.fallback):
            if p is not None:
                check_divisible(t.name, t.in_features, p)
    bos = loaded.add_bos()
    calib = calibration_windows(loaded.tokenizer, req.calib, req.nsamples, req.seqlen, req.seed, bos)
    held_out = eval_windows(loaded.tokenizer, req.eval_data, req.seqlen, req.eval_windows, bos)

    def ppl() -> float:
        model.to(req.device)
        nll, _ = perplexity(model, held_out, req.device, skip_first=0)
        return math.exp(nll)

    def snapshot() -> dict[str, torch.Tensor]:
        return {t.name: t.module.weight.detach().clone() for t in targets}

    def load(weights: Mapping[str, torch.Tensor], names) -> None:
        with torch.no_grad():
            for t in targets:
                if t.name in names:
                    t.module.weight.copy_(weights[t.name])

    stage("dense perplexity")
    dense = snapshot()
    dense_ppl = ppl()

    def walk(pattern: Pattern) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        cfg = WalkConfig(method=method, options=options, pattern=pattern, device=req.device, store_device=req.device,
                         chunk_samples=req.nsamples)
        torch.manual_seed(req.seed)
        records = prune_model(model, adapter, calib, cfg)
        return snapshot(), {r.name: float(r.rel_error or 0.0) for r in records}

    stage(f"pruning with {req.method} {req.pattern}")
    sparse, errors = walk(req.pattern)
    fallback_w = dense
    if req.fallback is not None:
        load(dense, {t.name for t in targets})
        stage(f"pruning with {req.method} {req.fallback} (fallback)")
        fallback_w, _ = walk(req.fallback)
    shapes = {t.name: tuple(t.weight_out_in().shape) for t in targets}
    ranking = rank_linears(errors, shapes, speedups)
    order = [r["name"] for r in ranking]

    def ppl_of(k: int) -> float:
        stage(f"perplexity with {k} linear(s) at the fallback")
        load(fallback_w, set(order[:k]))
        load(sparse, set(order[k:]))
        return ppl()

    if req.keep_dense is not None:
        k = req.keep_dense
        seen = {k: ppl_of(k)}
    else:
        target = dense_ppl * (1 + req.budget_ppl / 100.0)
        try:
            k, seen = choose_count(ppl_of, n, target, req.fallback is None)
        except _Unreachable as e:
            raise InputError(
                f"the budget +{req.budget_ppl:g}% (perplexity <= {target:.3f}, dense {dense_ppl:.3f}) cannot be met "
                f"with any sparse linear: the best reachable is {e.best:.3f} "
                f"({100 * (e.best / dense_ppl - 1):+.1f}%, with {e.what})",
                fix=f"raise --budget-ppl to at least +{math.ceil(1000 * (e.best / dense_ppl - 1)) / 10:g}%, "
                "use a gentler --fallback (e.g. 4:8) or a better --method",
            ) from None
    chosen = set(order[:k])
    fb = None if req.fallback is None else str(req.fallback)
    linears = {t.name: (fb if t.name in chosen else str(req.pattern)) for t in targets}
    total = sum(o * i for o, i in shapes.values())
    sparse_work = sum(o * i for name, (o, i) in shapes.items() if name not in chosen)
    details = {
        "options": dict(sorted(req.options.items())),
        "calibration": {"source": req.calib.name, "nsamples": req.nsamples, "seqlen": req.seqlen, "seed": req.seed},
        "budget": {"ppl_percent": req.budget_ppl, "keep_dense": req.keep_dense, "gemm": req.gemm_source},
        "estimate": {
            "eval": {"source": req.eval_data.name, "windows": int(held_out.shape[0]), "seqlen": req.seqlen},
            "dense_ppl": round(dense_ppl, 4),
            "plan_ppl": round(seen[k], 4),
            "tried": {str(kk): round(v, 4) for kk, v in sorted(seen.items())},
            "fallback_count": k,
            "work_at_pattern": round(sparse_work / total, 4),
        },
        "ranking": [{**r, "rel_error": round(r["rel_error"], 6), "gain": round(r["gain"], 1)} for r in ranking],
    }
    plan = Plan(
        model={"source": req.model, "model_type": model.config.model_type, "family": adapter.family,
               "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
               "num_layers": len(adapter.layers(model))},
        pattern=str(req.pattern), linears=linears, method=req.method, fallback=fb, details=details,
    )
    stage(f"writing {req.out}")
    plan.save(req.out)
    return plan
