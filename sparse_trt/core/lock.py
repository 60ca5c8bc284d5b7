"""An exclusive lock on an output location, so two runs never write one OUT at the same time.

The lock is ``flock`` on a hidden sibling file ``.OUT.lock`` holding the owner's PID. The kernel drops
it when the process dies (even on ``kill -9``), so a stale file never blocks a later run. Re-entrant
within one process: a command that holds the lock may call helpers that take it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError, OutputBusyError

_held: set[str] = set()


def lock_path(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def make_parents(folder: Path, what: str) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created (deepest last).

    Every failure is an InputError naming the output and the part of the path that is in the way.
    """
    folder = Path(folder).absolute()
    missing: list[Path] = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise InputError(f"{what} cannot be created under '{folder}': '{p}' is a file, not a folder",
                         fix="choose an output path inside an existing folder")
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            remove_empty(created)
            raise InputError(f"{what} cannot be created: folder '{d}' cannot be made ({e.strerror or e})",
                             fix="choose an output path in a writable folder") from None
        created.append(d)
    return created


def remove_empty(dirs: list[Path]) -> None:
    """Remove folders made by ``make_parents`` again, deepest first, if they are still empty."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        if text:
            return f"PID {int(text)}"
    return "an unknown process"


@contextlib.contextmanager
def output_lock(out: Path, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (missing parent folders are created, and removed again on failure)."""
    out = Path(out).absolute()
    key = str(out)
    if key in _held:
        yield
        return
    created = make_parents(out.parent, f"{what} '{out}'")
    lock = lock_path(out)
    ok = False
    try:
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise InputError(f"{what} '{out}' cannot be written: lock file '{lock}' cannot be created "
                                 f"({e.strerror or e})", fix="choose an output path in a writable folder") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError(f"{what} '{out}': cannot lock '{lock}' ({e.strerror or e})",
                                     fix="choose an output path on a local file system") from None
                raise OutputBusyError(
                    f"{what} '{out}' is being written by another sparse-trt run ({holder} holds '{lock}')",
                    fix="wait for that run to finish (or stop it), or choose another output path",
                ) from None
            # The previous holder may have removed the file between our open and flock: retry on a fresh one.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held.add(key)
        try:
            yield
            ok = True
        finally:
            _held.discard(key)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)
    finally:
        if not ok:
            remove_empty(created)
