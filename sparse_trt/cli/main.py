"""``sparse-trt``: the Typer app. Each command (or command group) is a module-level Typer app in its own module.

Command modules import the library inside their commands, so ``--help`` and argument errors answer without
loading torch.
"""

from __future__ import annotations

import typer

import sparse_trt

from . import bench, build, demo, export, plan, prune, quantize, recover, report, triton, verify
from . import eval as eval_

app = typer.Typer(
    name="sparse-trt",
    help="Prune causal LMs to 2:4 / N:M / unstructured sparsity, build TensorRT-LLM engines with weight "
    "sparsity, serve them on Triton, and benchmark dense vs sparse: does the sparse model cut cost per "
    "useful token while keeping quality?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# In pipeline order, as `sparse-trt --help` lists them; a group's Typer carries its own name.
COMMAND_MODULES = (prune, plan, recover, quantize, verify, eval_, demo, triton, export, build, bench, report)

for _module in COMMAND_MODULES:
    app.add_typer(_module.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sparse_trt {sparse_trt.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
