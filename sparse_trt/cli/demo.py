"""``sparse-trt demo``: the main job on the built-in default, end to end, in minutes on a CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from .common import console, handle_errors, out, progress_bar, setup_logging

#: The demo's size: small enough to finish in a few minutes on a 2-core CPU, large enough for the same
#: verdicts as a full run (2:4 holds everywhere, perplexity rises, no CPU speedup).
DEMO_NSAMPLES, DEMO_SEQLEN, DEMO_EVAL_WINDOWS = 16, 512, 16
#: ``--full``: prune's and eval's own defaults (what a user's own run gets).
FULL_NSAMPLES, FULL_SEQLEN, FULL_EVAL_WINDOWS = 128, 2048, 64

STEPS = ("prune", "verify", "perplexity (held-out wiki)", "summary", "benchmark dense vs pruned (hf backend, CPU) and report")


def _step(i: int) -> None:
    console.rule(f"[bold]{i}/{len(STEPS)} {STEPS[i - 1]}", characters="─")


app = typer.Typer()


@app.command("demo")
@handle_errors
def demo_cmd(
    out_dir: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Folder for everything the demo writes (its own subfolders are replaced)."),
    model: str = typer.Option("smollm2", "--model", help="Model to prune (default: built-in SmolLM2-135M)."),
    method: str = typer.Option("sparsegpt", "--method", help="Pruning method (see `sparse-trt prune --help`)."),
    pattern: str = typer.Option("2:4", "--pattern", help="Sparsity pattern, e.g. 2:4, 4:8 or 0.5."),
    nsamples: int | None = typer.Option(None, "--nsamples", show_default=False,
                                        help=f"Calibration windows (default {DEMO_NSAMPLES}; {FULL_NSAMPLES} with --full)."),
    seqlen: int | None = typer.Option(None, "--seqlen", show_default=False,
                                      help=f"Tokens per calibration/evaluation window (default {DEMO_SEQLEN}; {FULL_SEQLEN} with --full)."),
    eval_windows: int | None = typer.Option(None, "--eval-windows", show_default=False,
                                            help=f"Held-out windows for perplexity (default {DEMO_EVAL_WINDOWS}; {FULL_EVAL_WINDOWS} with --full)."),
    full: bool = typer.Option(False, "--full", help="Full-size run: prune's and eval's own defaults (128 x 2048 calibration, 2048-token windows); many times longer."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """The whole job on SmolLM2-135M, in a few minutes on a 2-core CPU.

    Five steps: prune (SparseGPT 2:4 on the built-in wiki corpus) -> verify every matrix -> perplexity of dense and pruned on held-out wiki -> summary -> a small dense-vs-pruned benchmark on the hf backend and a Markdown/PNG report with the cost-per-token verdict.

    On a CPU no sparse kernels exist, and the benchmark and report say so: zeros alone make nothing faster.
    """
    from sparse_trt.core.patterns import parse_pattern
    from sparse_trt.data.text import TextSource
    from sparse_trt.eval.api import evaluate_loaded, record_quality
    from sparse_trt.models.loading import load_model
    from sparse_trt.prune.api import PruneRequest
    from sparse_trt.prune.verify import verify_dir

    from .bench import demo_bench_step
    from .options import resolve_device
    from .prune import prune_with_progress

    setup_logging(verbose)
    started = time.monotonic()
    nsamples = nsamples or (FULL_NSAMPLES if full else DEMO_NSAMPLES)
    seqlen = seqlen or (FULL_SEQLEN if full else DEMO_SEQLEN)
    eval_windows = eval_windows or (FULL_EVAL_WINDOWS if full else DEMO_EVAL_WINDOWS)
    dev = resolve_device(device)
    pat = parse_pattern(pattern)
    wiki = TextSource("wiki")
    pruned_dir = out_dir / f"{model.replace('/', '_')}-{str(pat).replace(':', 'of')}-{method}"
    size = f"{nsamples} calibration windows x {seqlen} tokens, {eval_windows} held-out windows x {seqlen}"
    console.print(
        f"demo: {model}, {method} {pat}, {size} on {dev}"
        + ("" if full else " (a reduced size, to finish in minutes; `sparse-trt demo --full` runs prune's "
                            "and eval's own defaults)"),
        markup=False, highlight=False,
    )

    _step(1)
    outcome = prune_with_progress(
        PruneRequest(model=model, out=pruned_dir, method=method, pattern=pat, calib=wiki, nsamples=nsamples,
                     seqlen=seqlen, seed=0, device=dev, overwrite=True)
    )
    console.print(f"pruned in {outcome.manifest.timings['prune_s']:.1f}s -> {pruned_dir}", markup=False)

    _step(2)
    report = verify_dir(pruned_dir)
    held = len(report.layers) - len(report.failures)
    console.print(f"{'[green]OK' if report.ok else '[red]FAILED'}[/]: {held}/{len(report.layers)} linears hold {report.pattern}")
    report.raise_for_failures()

    _step(3)
    results = {}
    for label, spec in (("dense", model), ("pruned", str(pruned_dir))):
        loaded = load_model(spec)
        with progress_bar(f"{label} perplexity") as (prog, task):
            results[label] = evaluate_loaded(
                loaded, spec, wiki, seqlen, eval_windows, dev, progress=lambda i, n: prog.update(task, completed=i, total=n)
            )
        del loaded
    record_quality(pruned_dir, results["pruned"], "perplexity")
    record_quality(pruned_dir, results["dense"], "dense_perplexity")

    _step(4)
    dense_r, pruned_r = results["dense"], results["pruned"]
    t = Table(title=f"{model}: {method} {pat}, perplexity on held-out wiki ({dense_r.windows} x {seqlen} tokens)")
    for c in ("model", "perplexity", "windows x seqlen", "folder"):
        t.add_column(c)
    t.add_row("dense", f"{dense_r.perplexity:.2f}", f"{dense_r.windows} x {seqlen}", model)
    t.add_row(f"pruned {pat}", f"{pruned_r.perplexity:.2f}", f"{pruned_r.windows} x {seqlen}", str(pruned_dir))
    out.print(t)
    ratio = pruned_r.perplexity / dense_r.perplexity
    summary = {
        "model": model,
        "method": method,
        "pattern": str(pat),
        "pruned_dir": str(pruned_dir),
        "calibration": {"nsamples": nsamples, "seqlen": seqlen},
        "eval_windows": dense_r.windows,
        "prune_seconds": outcome.manifest.timings["prune_s"],
        "dense_perplexity": dense_r.perplexity,
        "pruned_perplexity": pruned_r.perplexity,
        "perplexity_ratio": ratio,
        "verified": report.ok,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(
        f"perplexity x{ratio:.2f} of dense (one-shot pruning costs quality; see `sparse-trt prune --help` for "
        f"sparsegpt-block). Wrote {pruned_dir} (HF checkpoint + sparsity.json) and {out_dir / 'demo_summary.json'}.\n"
        "Zeros alone do not make a model faster: speed needs 2:4 kernels (a TensorRT-LLM engine or torch "
        "semi-structured on an Ampere+ GPU); the next steps measure it on this machine instead of assuming it.",
        markup=False, highlight=False,
    )

    _step(5)
    report_dir = demo_bench_step(model, pruned_dir, out_dir, dev)
    console.print(f"report: {report_dir / 'report.md'}", markup=False)
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    console.print(f"demo finished in {minutes}:{seconds:02d}", markup=False)
