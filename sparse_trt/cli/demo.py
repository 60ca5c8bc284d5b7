"""``sparse-trt demo``: the main job on the built-in default, end to end, in minutes on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from sparse_trt.core.patterns import parse_pattern
from sparse_trt.data.text import TextSource
from sparse_trt.eval.api import evaluate_loaded, record_quality
from sparse_trt.models.loading import load_model
from sparse_trt.prune.api import PruneRequest
from sparse_trt.prune.verify import verify_dir

from .common import console, handle_errors, out, progress_bar, setup_logging
from .options import resolve_device
from .prune import prune_with_progress


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @handle_errors
    def demo_cmd(
        out_dir: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Folder for everything the demo writes (its own subfolders are replaced)."),
        model: str = typer.Option("smollm2", "--model", help="Model to prune (default: built-in SmolLM2-135M)."),
        method: str = typer.Option("sparsegpt", "--method", help="Pruning method."),
        pattern: str = typer.Option("2:4", "--pattern", help="Sparsity pattern."),
        nsamples: int = typer.Option(32, "--nsamples", help="Calibration windows."),
        seqlen: int = typer.Option(512, "--seqlen", help="Tokens per calibration/evaluation window."),
        eval_windows: int = typer.Option(32, "--eval-windows", help="Held-out windows for perplexity."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """SmolLM2 -> SparseGPT 2:4 on the wiki corpus -> verify -> perplexity dense vs pruned -> summary."""
        setup_logging(verbose)
        dev = resolve_device(device)
        pat = parse_pattern(pattern)
        wiki = TextSource("wiki")
        pruned_dir = out_dir / f"{model.replace('/', '_')}-{str(pat).replace(':', 'of')}-{method}"

        console.rule("[bold]1/5 prune")
        outcome = prune_with_progress(
            PruneRequest(model=model, out=pruned_dir, method=method, pattern=pat, calib=wiki, nsamples=nsamples,
                         seqlen=seqlen, seed=0, device=dev, overwrite=True)
        )
        console.print(f"pruned in {outcome.manifest.timings['prune_s']:.1f}s -> {pruned_dir}")

        console.rule("[bold]2/5 verify")
        report = verify_dir(pruned_dir)
        console.print(
            f"{'[green]OK' if report.ok else '[red]FAILED'}[/]: {len(report.layers) - len(report.failures)}/{len(report.layers)} "
            f"linears hold {report.pattern}"
        )
        if not report.ok:
            raise typer.Exit(4)

        console.rule("[bold]3/5 perplexity (held-out wiki)")
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

        console.rule("[bold]4/5 summary")
        t = Table(title=f"{model}: {method} {pat}")
        for c in ("model", "perplexity", "windows x seqlen", "folder"):
            t.add_column(c)
        t.add_row("dense", f"{results['dense'].perplexity:.2f}", f"{results['dense'].windows} x {seqlen}", model)
        t.add_row(f"pruned {pat}", f"{results['pruned'].perplexity:.2f}", f"{results['pruned'].windows} x {seqlen}", str(pruned_dir))
        out.print(t)
        ratio = results["pruned"].perplexity / results["dense"].perplexity
        summary = {
            "model": model,
            "method": method,
            "pattern": str(pat),
            "pruned_dir": str(pruned_dir),
            "prune_seconds": outcome.manifest.timings["prune_s"],
            "dense_perplexity": results["dense"].perplexity,
            "pruned_perplexity": results["pruned"].perplexity,
            "perplexity_ratio": ratio,
            "verified": report.ok,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.print(
            f"perplexity x{ratio:.2f} vs dense. Wrote: {pruned_dir} (HF checkpoint + sparsity.json), "
            f"{out_dir / 'demo_summary.json'}.\n"
            "Zeros alone do not make a model faster: speed needs 2:4 kernels (TensorRT-LLM engine or torch "
            "semi-structured on an Ampere+ GPU); measure it, don't assume it."
        )

        # Step 5 (bench, appended by the benchmark owner): dense vs pruned on the hf backend, and a report.
        from .bench import demo_bench_step

        console.rule("[bold]5/5 benchmark: dense vs pruned (hf backend, small CPU workload)")
        demo_bench_step(model, pruned_dir, out_dir, dev)
