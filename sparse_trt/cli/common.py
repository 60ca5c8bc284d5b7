"""Shared CLI plumbing: console, error mapping, progress bars, option parsing helpers."""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
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

from sparse_trt.core.errors import InterruptedRun, SparseTrtError, TerminatedRun

console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so every interruption path (progress kept) runs."""


_sigterm = {"seen": False}


def _on_sigterm(signum, frame) -> None:
    _sigterm["seen"] = True
    raise Terminated()


@contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM raises ``Terminated`` (main thread only; restored afterwards)."""
    _sigterm["seen"] = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _exit_interrupted() -> typer.Exit:
    if _sigterm["seen"]:
        console.print("[bold red]terminated[/] (SIGTERM)")
        return typer.Exit(TerminatedRun.exit_code)
    console.print("[bold red]interrupted[/]")
    return typer.Exit(InterruptedRun.exit_code)


def handle_errors(fn: F) -> F:
    """Turn SparseTrtError into a red message and its exit code; Ctrl-C into exit 130, SIGTERM into 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except SparseTrtError as e:
            console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
            if e.fix:
                console.print(f"[yellow]fix:[/] {escape(e.fix)}", highlight=False, soft_wrap=True)
            if isinstance(e, InterruptedRun):
                raise _exit_interrupted() from None
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            raise _exit_interrupted() from None

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


class PlainProgress:
    """Progress for a stderr that is not a terminal (a log file, CI, ``nohup``): plain lines, throttled.

    Same ``update(task, ...)`` calls as Rich's Progress, so callers do not care which one they got. A line
    is written when the description changes, on completion, and otherwise at most every ``every_s``
    seconds, with elapsed time and a linear ETA.
    """

    def __init__(self, description: str, total: float | None, every_s: float = 15.0) -> None:
        self.description = description
        self.total = total
        self.completed = 0.0
        self.every_s = every_s
        self.start = time.monotonic()
        self._last_line = float("-inf")
        self._last_text = ""

    def update(self, task: int = 0, *, description: str | None = None, completed: float | None = None,
               total: float | None = None, advance: float | None = None) -> None:
        changed = description is not None and description != self.description
        if description is not None:
            self.description = description
        if total is not None:
            self.total = total
        if advance is not None:
            self.completed += advance
        if completed is not None:
            self.completed = completed
        now = time.monotonic()
        done = self.total is not None and self.completed >= self.total
        if changed or done or now - self._last_line >= self.every_s:
            self._emit(now)

    def _emit(self, now: float) -> None:
        elapsed = now - self.start
        text = self.description
        if self.total:
            text += f": {self.completed:g}/{self.total:g}"
            if 0 < self.completed < self.total:
                text += f", eta {_fmt_s(elapsed * (self.total - self.completed) / self.completed)}"
        if text == self._last_text:
            return
        self._last_text, self._last_line = text, now
        console.print(f"[{_fmt_s(elapsed)}] {text}", markup=False, highlight=False, soft_wrap=True)


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """Progress on stderr, yielding (progress, task_id): a Rich bar with ETA on a terminal, plain
    throttled lines otherwise (so a background run's log shows it is alive)."""
    if not console.is_terminal:
        yield PlainProgress(description, total), 0
        return
    prog = Progress(
        TextColumn("{task.description}", style="bold blue", markup=False),
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
    """``KEY=VALUE`` options as a dict (core.options.parse_kv: malformed or repeated keys are bad input)."""
    from sparse_trt.core.options import parse_kv as _parse_kv

    return _parse_kv(items, what)
