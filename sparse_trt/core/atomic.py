"""Atomic output directories: build in a sibling temp dir, then swap into place.

A failure at any point leaves no half-written output and keeps whatever existed before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError


def check_output_dir(path: Path, overwrite: bool, what: str = "output directory") -> None:
    """Refuse an existing output unless overwrite is set (call before any expensive work)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{what} '{path}' already exists",
            fix="choose another path, or pass --overwrite to replace it (it is replaced only on success)",
        )
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{what} '{path}' exists and is not a directory", fix="remove it or pick another path")


@contextlib.contextmanager
def atomic_output_dir(path: Path, overwrite: bool = False, what: str = "output directory") -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename.

    On any exception the temp dir is removed and ``path`` is left exactly as it was.
    """
    path = Path(path).absolute()
    check_output_dir(path, overwrite, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like a normal mkdir
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temp file + rename, so readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
