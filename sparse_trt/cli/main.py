"""``sparse-trt``: the Typer app. Each command group lives in its own module and registers itself."""

from __future__ import annotations

import importlib

import typer

import sparse_trt

app = typer.Typer(
    name="sparse-trt",
    help="Prune causal LMs to 2:4 / N:M / unstructured sparsity, build TensorRT-LLM engines with weight "
    "sparsity, serve them on Triton, and benchmark dense vs sparse: does the sparse model cut cost per "
    "useful token while keeping quality?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command group; each defines register(app).
COMMAND_MODULES = ("prune", "plan", "recover", "quantize", "verify", "eval", "demo", "triton", "export", "build", "bench", "report")

for _name in COMMAND_MODULES:
    importlib.import_module(f"sparse_trt.cli.{_name}").register(app)


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
