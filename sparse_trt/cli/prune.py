"""``sparse-trt prune``: one-shot pruning of a causal LM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, handle_errors, parse_kv, progress_bar, setup_logging

if TYPE_CHECKING:
    from sparse_trt.prune.api import PruneOutcome, PruneRequest

#: The registered methods, for help texts (kept equal to prune.methods.method_names() by a test: the CLI
#: answers --help without importing torch).
METHODS_HELP = "sparsegpt (default), sparsegpt-block (best quality, ~2x the time), sparsegpt-refit, wanda, magnitude"


def summary_table(outcome: PruneOutcome) -> Table:
    m = outcome.manifest
    t = Table(title=f"{m.method} {m.pattern} -> {outcome.out}", show_lines=False)
    t.add_column("linear")
    t.add_column("pattern")
    t.add_column("sparsity", justify="right")
    t.add_column("rel. error", justify="right")
    t.add_column("damp retries", justify="right")
    for r in m.layers:
        t.add_row(
            r.name,
            r.pattern or "dense",
            f"{r.sparsity:.3f}",
            "-" if r.rel_error is None else f"{r.rel_error:.4f}",
            str(r.damp_retries),
        )
    return t


def method_options(opt: list[str]) -> dict[str, str]:
    """--opt KEY=VALUE pairs as text; the method's typed options parse them (core/options.py: unknown keys,
    bad values and non-finite numbers are refused there, before any work)."""
    return parse_kv(opt, "--opt")


def prune_with_progress(req: PruneRequest) -> PruneOutcome:
    from sparse_trt.prune.api import run_prune

    with progress_bar("pruning layers") as (prog, task):

        def stage(s: str) -> None:
            prog.update(task, description=s)

        def on_layer(i: int, n: int, secs: float) -> None:
            prog.update(task, total=n, completed=i + 1, description=f"layer {i + 1}/{n}")

        return run_prune(req, progress=on_layer, on_stage=stage)


app = typer.Typer()


@app.command("prune")
@handle_errors
def prune_cmd(
    model: str = typer.Argument(..., help="HF model folder, hub id, .gguf file, or the built-in 'smollm2'."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (HF checkpoint + sparsity.json), written atomically."),
    method: str | None = typer.Option(
        None, "--method", "-m", show_default=False,
        help=f"Pruning method: {METHODS_HELP}. With --plan the default is the plan's method (and its --opt values).",
    ),
    pattern: str = typer.Option("2:4", "--pattern", "-p", help="N:M (at most N non-zeros per M inputs, e.g. 2:4, 4:8) or a fraction in (0,1) for unstructured per-row sparsity."),
    calib: str = typer.Option("wiki", "--calib", help="Calibration text: 'wiki' (built-in corpus), FILE.txt, or FILE.jsonl with a 'text' field."),
    nsamples: int = typer.Option(128, "--nsamples", help="Number of calibration windows."),
    seqlen: int = typer.Option(2048, "--seqlen", help="Tokens per calibration window (at most the model's context)."),
    seed: int = typer.Option(0, "--seed", help="Seed for window sampling."),
    device: str = typer.Option("auto", "--device", help="Compute device: auto, cpu, cuda, cuda:N. Only one decoder layer at a time lives there."),
    dtype: str = typer.Option("auto", "--dtype", help="Load dtype: auto (checkpoint's), float32, float16, bfloat16."),
    exclude: list[str] = typer.Option([], "--exclude", help="Glob over module names to keep dense (repeatable), e.g. '*.mlp.down_proj'."),
    opt: list[str] = typer.Option([], "--opt", help="Method option KEY=VALUE (repeatable), e.g. --opt damp=0.05 --opt blocksize=128."),
    plan: Path | None = typer.Option(None, "--plan", help="Per-layer plan from `sparse-trt plan` (dense / pattern per linear)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished layer (bit-identical result)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only once the new one is complete)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow models that ship custom code."),
    chunk_samples: int | None = typer.Option(None, "--chunk-samples", help="Windows per layer forward (default: as many as fit in memory; all of them gives one pass per layer)."),
    max_memory: str | None = typer.Option(None, "--max-memory", help="Host memory the calibration activations may take, e.g. 8GB (default: half the available); beyond it they go to memory-mapped files next to OUT."),
    shard_size: str = typer.Option("5GB", "--shard-size", help="Largest output weight file, e.g. 2GB (HF shards with model.safetensors.index.json)."),
    in_memory: bool = typer.Option(False, "--in-memory", help="Load the whole model instead of streaming one decoder layer at a time from its safetensors shards."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Prune MODEL one decoder layer at a time and write a pruned HF checkpoint with sparsity.json."""
    from sparse_trt.core.patterns import parse_pattern
    from sparse_trt.core.sizes import parse_size
    from sparse_trt.data.text import parse_source
    from sparse_trt.prune.api import PruneRequest
    from sparse_trt.prune.methods import get_method

    from .options import resolve_device, resolve_dtype

    setup_logging(verbose)
    layer_patterns: dict = {}
    plan_source = plan_model = None
    options = method_options(opt)
    if plan is not None:
        from sparse_trt.plan import load_plan

        loaded_plan = load_plan(plan)
        layer_patterns = loaded_plan.layer_patterns()
        plan_source, plan_model = str(plan), loaded_plan.model_name()
        method, options, note = loaded_plan.prune_settings(method, options)
        if note:
            console.print(f"[yellow]note:[/] {escape(note)}")
    method = method or "sparsegpt"
    get_method(method)
    req = PruneRequest(
        model=model,
        out=out,
        method=method,
        pattern=parse_pattern(pattern),
        calib=parse_source(calib),
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
        exclude=tuple(exclude),
        options=options,
        layer_patterns=layer_patterns,
        plan_source=plan_source,
        plan_model=plan_model,
        resume=resume,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        chunk_samples=chunk_samples,
        streaming=not in_memory,
        max_memory=None if max_memory is None else parse_size(max_memory, "--max-memory"),
        shard_bytes=parse_size(shard_size, "--shard-size"),
    )
    outcome = prune_with_progress(req)
    m = outcome.manifest
    if verbose:
        console.print(summary_table(outcome))
    pruned = [r for r in m.layers if r.pattern is not None]
    mean_sp = sum(r.sparsity for r in pruned) / max(len(pruned), 1)
    errs = [r.rel_error for r in pruned if r.rel_error is not None]
    console.print(
        f"[green]pruned[/] {len(pruned)} linears with {m.method} to {m.pattern} "
        f"(mean sparsity {mean_sp:.3f}, mean rel. error {sum(errs) / max(len(errs), 1):.4f}) "
        f"in {m.timings['prune_s']:.1f}s"
        + (f", resumed after {outcome.resumed_layers} layers" if outcome.resumed_layers else "")
    )
    retries = sum(r.damp_retries for r in m.layers)
    if retries:
        console.print(f"[yellow]{retries} dampening retries[/] (see sparsity.json)")
    console.print(f"wrote {outcome.out} (check it with `sparse-trt verify {outcome.out}`)")
