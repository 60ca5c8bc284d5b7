"""Shared CLI plumbing: console, error mapping, progress bars, option parsing helpers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sparse_trt.core.errors import SparseTrtError

console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn SparseTrtError into a red message and its exit code; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SparseTrtError as e:
            console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
            if e.fix:
                console.print(f"[yellow]fix:[/] {escape(e.fix)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
        force=True,
    )
    # transformers' own progress bars and warnings are noise on our console unless verbose
    if not verbose:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001
            pass


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """A rich progress bar with ETA on stderr; yields (progress, task_id)."""
    prog = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with prog:
        task = prog.add_task(description, total=total)
        yield prog, task


def parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out_: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            from sparse_trt.core.errors import InputError

            raise InputError(f"{what} '{item}' is not KEY=VALUE", fix=f"e.g. {what} damp=0.05")
        k, v = item.split("=", 1)
        out_[k.strip()] = v.strip()
    return out_
