"""``sparse-trt plan``: choose which linears stay dense (or at a gentler pattern) to meet a quality budget."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from sparse_trt.core.errors import InputError

from .common import console, handle_errors, out, progress_bar, setup_logging
from .prune import METHODS_HELP


def parse_budget(text: str) -> float:
    """``"+5%"``, ``"5%"`` or ``"5"`` -> 5.0 (percent of the dense perplexity)."""
    s = text.strip().rstrip("%").strip()
    try:
        value = float(s)
    except ValueError:
        raise InputError(f"--budget-ppl {text!r} is not a percentage", fix="e.g. --budget-ppl +5%") from None
    if not math.isfinite(value):
        raise InputError(f"--budget-ppl {text!r} is not a finite percentage", fix="e.g. --budget-ppl +5%")
    return value


app = typer.Typer()


@app.command("plan")
@handle_errors
def plan_cmd(
    model: str = typer.Argument(..., help="HF model folder, hub id, .gguf file, or the built-in 'smollm2'."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Plan file to write (JSON), for `sparse-trt prune --plan`."),
    budget_ppl: str | None = typer.Option(None, "--budget-ppl", help="Allowed perplexity increase over dense, e.g. +5%."),
    keep_dense: int | None = typer.Option(None, "--keep-dense", help="Send exactly this many linears to the fallback."),
    method: str = typer.Option("sparsegpt", "--method", "-m", help=f"Pruning method: {METHODS_HELP}."),
    pattern: str = typer.Option("2:4", "--pattern", "-p", help="Pattern of the linears that stay sparse."),
    fallback: str = typer.Option("dense", "--fallback", help="'dense' or a gentler pattern such as 4:8 for the sensitive linears."),
    gemm: Path | None = typer.Option(None, "--gemm", help="`sparse-trt bench gemm` results: weigh linears by their measured speedup."),
    calib: str = typer.Option("wiki", "--calib", help="Calibration text: 'wiki', FILE.txt or FILE.jsonl."),
    nsamples: int = typer.Option(32, "--nsamples", help="Calibration windows."),
    seqlen: int = typer.Option(512, "--seqlen", help="Tokens per window (calibration and held-out)."),
    eval_windows: int = typer.Option(8, "--eval-windows", help="Held-out windows used to estimate perplexity."),
    seed: int = typer.Option(0, "--seed", help="Seed for calibration window sampling."),
    device: str = typer.Option("auto", "--device", help="Compute device: auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="Load dtype: auto (checkpoint's), float32, float16, bfloat16."),
    opt: list[str] = typer.Option([], "--opt", help="Method option KEY=VALUE (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing plan file."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Measure per-linear damage and write a plan that meets a perplexity budget with the most speed kept."""
    from sparse_trt.core.patterns import parse_pattern
    from sparse_trt.data.text import parse_source
    from sparse_trt.plan import PlanRequest, gemm_speedups, make_plan

    from .options import resolve_device, resolve_dtype
    from .prune import method_options

    setup_logging(verbose)
    speedups = None
    if gemm is not None:
        from sparse_trt.bench.results import ResultsFile

        res = ResultsFile.load(gemm)
        if res.gemm is None:
            raise InputError(f"'{gemm}' holds no GEMM probe rows", fix="pass a file written by `sparse-trt bench gemm`")
        speedups = gemm_speedups((row.shape, row.speedup) for row in res.gemm.rows if row.status == "ok")
    req = PlanRequest(
        model=model, out=out_path, method=method, pattern=parse_pattern(pattern),
        fallback=None if fallback.strip().lower() == "dense" else parse_pattern(fallback),
        budget_ppl=None if budget_ppl is None else parse_budget(budget_ppl), keep_dense=keep_dense,
        gemm_speedups=speedups, gemm_source=None if gemm is None else str(gemm),
        calib=parse_source(calib), nsamples=nsamples, seqlen=seqlen, eval_windows=eval_windows, seed=seed,
        device=resolve_device(device), dtype=resolve_dtype(dtype), options=method_options(opt), overwrite=overwrite,
    )
    with progress_bar("planning") as (prog, task):
        plan = make_plan(req, on_stage=lambda s: prog.update(task, description=s))
    est = plan.details["estimate"]
    n_fb = est["fallback_count"]
    console.print(
        f"{len(plan.linears) - n_fb} linear(s) at {plan.pattern}, {n_fb} at {plan.fallback or 'dense'}; "
        f"{100 * est['work_at_pattern']:.1f}% of the GEMM work at {plan.pattern}; estimated perplexity "
        f"{est['plan_ppl']:.3f} vs dense {est['dense_ppl']:.3f} ({100 * (est['plan_ppl'] / est['dense_ppl'] - 1):+.1f}%)",
        highlight=False,
    )
    out.print(str(out_path))
