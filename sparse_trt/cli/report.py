"""``sparse-trt report``: Markdown + PNG plots from results JSON files (no measuring here)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from .common import console, handle_errors, out, setup_logging

app = typer.Typer()


@app.command("report")
@handle_errors
def report_cmd(
    results: list[Path] = typer.Argument(..., help="Results JSON files from `sparse-trt bench run|compare|gemm`."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Report folder (report.md + PNG plots)."),
    gpu_hour_usd: float = typer.Option(2.5, "--gpu-hour-usd", help="Price of one device-hour in USD, for cost per 1M output tokens."),
    max_ppl_increase: float = typer.Option(0.05, "--max-ppl-increase", help="Quality counts as kept up to this relative perplexity rise."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Render PNG plots (needs matplotlib: the bench extra)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report folder (only once the new one is complete)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details (library warnings)."),
) -> None:
    """Does the sparse model cut cost per useful token while keeping quality? Answered from measurements."""
    setup_logging(verbose)
    from sparse_trt.bench.report import build_report
    from sparse_trt.core.atomic import atomic_output_dir

    with atomic_output_dir(out_dir, overwrite=overwrite, what="report folder") as tmp:
        res = build_report(list(results), tmp, gpu_hour_usd=gpu_hour_usd, max_ppl_increase=max_ppl_increase, plots=plots)
    for v in res.verdicts:
        style = "bold green" if v.answer.startswith("YES") else "bold red" if v.answer.startswith("NO") else "bold yellow"
        out.print(Text(f"{v.sparse_label} vs {v.dense_label}: {v.answer}", style=style))
    console.print(f"wrote {out_dir / res.markdown.name}" + (f" and {len(res.plots)} plots" if res.plots else ""), markup=False, highlight=False)
