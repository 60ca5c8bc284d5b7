"""``sparse-trt verify``: check a pruned checkpoint against its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from sparse_trt.prune.verify import verify_dir

from .common import console, handle_errors, out


def register(app: typer.Typer) -> None:
    @app.command("verify")
    @handle_errors
    def verify_cmd(
        directory: Path = typer.Argument(..., help="Output folder of `sparse-trt prune`."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    ) -> None:
        """Check every pruned matrix against the manifest's pattern; exit non-zero on any violation."""
        report = verify_dir(directory)
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
        else:
            t = Table(title=f"{directory}: {report.method} {report.pattern}")
            for col, just in (("linear", "left"), ("pattern", "left"), ("sparsity", "right"), ("violations", "right"), ("ok", "center")):
                t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
            for c in report.layers:
                t.add_row(c.name, c.pattern or "dense", f"{c.sparsity:.3f}", str(c.violations), "[green]yes[/]" if c.ok else f"[red]NO[/] {c.problem}")
            out.print(t)
        if not report.ok:
            console.print(f"[bold red]{len(report.failures)} of {len(report.layers)} linears violate their pattern:[/]")
            for c in report.failures:
                console.print(f"  {c.name}: {c.problem}", highlight=False, soft_wrap=True)
            raise typer.Exit(4)
        if not as_json:
            console.print(f"[green]all {len(report.layers)} linears match their pattern[/]")
