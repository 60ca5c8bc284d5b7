"""``sparse-trt verify``: check a pruned checkpoint against its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, handle_errors, out

app = typer.Typer()


@app.command("verify")
@handle_errors
def verify_cmd(
    directory: Path = typer.Argument(..., help="Output folder of `sparse-trt prune`."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow a model with custom code (needed to list its linears)."),
) -> None:
    """Check that the manifest covers every target linear and every pruned matrix holds its pattern.

    Exit 3 when the manifest does not cover the model, 4 when a weight breaks its pattern.
    """
    from sparse_trt.prune.verify import verify_dir

    report = verify_dir(directory, trust_remote_code)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        t = Table(title=escape(f"{directory}: {report.method} {report.pattern}"))
        for col, just in (("linear", "left"), ("pattern", "left"), ("sparsity", "right"), ("violations", "right"), ("ok", "center")):
            t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
        for c in report.layers:
            t.add_row(escape(c.name), c.pattern or "dense", f"{c.sparsity:.3f}", str(c.violations),
                      "[green]yes[/]" if c.ok else f"[red]NO[/] {escape(c.problem)}")
        out.print(t)
    if not report.ok:
        for c in report.failures[:20]:
            console.print(f"  {c.name}: {c.problem}", markup=False, highlight=False, soft_wrap=True)
        if len(report.failures) > 20:
            console.print(f"  ... and {len(report.failures) - 20} more", highlight=False)
    report.raise_for_failures()
    if not as_json:
        console.print(f"[green]all {len(report.layers)} linears of the manifest match their pattern[/] "
                      f"({report.pruned} pruned, {len(report.layers) - report.pruned} dense by plan, "
                      f"{report.excluded} excluded; every target linear covered)", highlight=False)
