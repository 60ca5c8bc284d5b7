"""The Typer command-line app (``sparse-trt``). The only layer that prints or exits."""
