"""Safe outputs: every command's output folder or file goes through this module.

* ``check_output_dir`` / ``check_output_file``: called before any expensive work. An existing output
  is refused without ``--overwrite``; with it, only an empty folder or one this tool wrote (it carries
  ``MARKER``, ``sparsity.json``, ``build_report.json``, ...) is replaced, and never ``/``, the home
  folder, the working folder or its parents, or the command's own input.
* ``atomic_output_dir``: build in a sibling temp folder, then swap into place in one rename, under an
  exclusive lock on the output. A failure at any point leaves no half-written output and keeps
  whatever existed before; temp folders left by a killed run are named, and removed with --overwrite.
* ``atomic_write_text``: a file via temp file + rename.

Outputs follow the umask like any other file (temp files and folders are created private, then
opened up to the umask's modes before they are renamed into place).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import InputError, OutputExistsError
from .lock import output_lock

log = logging.getLogger(__name__)

# Written into every folder atomic_output_dir creates: "this tool wrote it, --overwrite may replace it".
MARKER = ".sparse_trt"
# Files that mark a folder written by this tool before MARKER existed.
_DIR_MARKERS = ("sparsity.json", "build_report.json")
_TOOL_SCHEMAS = ("sparse_trt",)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path, *, base: int | None = None) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (keeps executable bits of files)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    mask = current_umask()
    if stat.S_ISDIR(st.st_mode):
        mode = 0o777
    else:
        mode = base if base is not None else (0o777 if st.st_mode & 0o100 else 0o666)
    os.chmod(path, mode & ~mask)


def follow_umask_tree(root: Path) -> None:
    """``follow_umask`` for a folder and everything in it (writers such as safetensors use private temp files)."""
    follow_umask(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            follow_umask(Path(dirpath) / n)


# ------------------------------------------------------------------------------- what may be replaced
def protected_reason(path: Path) -> str | None:
    """Why ``path`` must never be replaced (root, home, the working folder or a parent of it), or None."""
    p = Path(path).expanduser().resolve()
    if p == Path(p.anchor):
        return "the file-system root"
    with contextlib.suppress(RuntimeError, KeyError):
        if p == Path.home().resolve():
            return "your home folder"
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working folder was deleted
        return None
    if p == cwd:
        return "the working folder"
    if p in cwd.parents:
        return "a parent of the working folder"
    return None


def _json_object(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.loads(f.read(64 * 1024 * 1024))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_tool_file(path: Path) -> bool:
    """A JSON file this tool wrote (results, plans, manifests): it names sparse_trt as schema/format/tool."""
    obj = _json_object(Path(path))
    if obj is None:
        return False
    for key in ("schema", "format", "tool"):
        v = obj.get(key)
        if isinstance(v, str) and v.startswith(_TOOL_SCHEMAS):
            return True
    return False


def is_tool_output(path: Path) -> bool:
    """True for an empty folder, or one this tool wrote (marker file, manifest, build report, checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        return path.is_file() and is_tool_file(path)
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    if not entries or (path / MARKER).is_file():
        return True
    if any((path / m).is_file() and is_tool_file(path / m) for m in ("sparsity.json",)):
        return True
    if (path / "build_report.json").is_file():
        return True
    cfg = _json_object(path / "config.json") if (path / "config.json").is_file() else None
    producer = (cfg or {}).get("producer")
    return isinstance(producer, dict) and producer.get("name") == "sparse_trt"


def _refuse(what: str, path: Path, why: str, fix: str) -> OutputExistsError:
    return OutputExistsError(f"refusing to replace {what} '{path}': {why}", fix=fix)


def _check_replaceable(path: Path, what: str, inputs: Iterable[Path | str], tool_output: bool) -> None:
    reason = protected_reason(path)
    if reason is not None:
        raise _refuse(what, path, f"it is {reason}", "give -o a new folder of its own, e.g. -o out/")
    real = path.resolve()
    for inp in inputs:
        try:
            i = Path(inp).expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if real in i.parents:
            raise _refuse(what, path, f"it contains this command's input '{inp}'", "choose an output outside the input")
        if real == i and not tool_output:
            raise _refuse(what, path, "it is this command's input", "choose another output path")
    if not tool_output:
        kind = "folder" if path.is_dir() else "file"
        raise _refuse(
            what, path,
            f"the {kind} was not written by sparse-trt (it is not empty and has no {MARKER}, "
            f"{' or '.join(_DIR_MARKERS) if kind == 'folder' else 'sparse_trt schema'} in it)",
            "choose another output path, or remove it yourself if it really should go",
        )


def check_output_location(path: Path, what: str) -> None:
    """The output can be created: no file stands where a parent folder is needed."""
    p = Path(path).absolute().parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise InputError(f"{what} '{path}' cannot be created: '{p}' is a file, not a folder",
                         fix="choose an output path inside an existing folder")


def check_output_dir(path: Path, overwrite: bool, what: str = "output directory", *,
                     inputs: Iterable[Path | str] = ()) -> None:
    """Refuse an output folder that cannot or must not be (re)placed; call before any expensive work."""
    path = Path(path)
    check_output_location(path, what)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise OutputExistsError(
            f"{what} '{path}' already exists",
            fix="choose another path, or pass --overwrite to replace it (it is replaced only on success)",
        )
    if path.is_symlink():
        raise OutputExistsError(f"{what} '{path}' is a symbolic link; replacing it would not replace what it points to",
                                fix="give the real folder, or another path")
    if not path.is_dir():
        raise OutputExistsError(f"{what} '{path}' exists and is not a folder", fix="remove it or pick another path")
    _check_replaceable(path, what, inputs, is_tool_output(path))


def check_output_file(path: Path, overwrite: bool, what: str = "output file", *,
                      inputs: Iterable[Path | str] = (), recognise: Callable[[Path], bool] = is_tool_file) -> None:
    """Like ``check_output_dir`` for a single output file (results JSON, plan JSON)."""
    path = Path(path)
    check_output_location(path, what)
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder", fix="give a file name, e.g. results.json")
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{what} '{path}' already exists", fix="choose another path or pass --overwrite")
    _check_replaceable(path, what, inputs, recognise(path))


# ------------------------------------------------------------------------------- leftovers
def stale_temps(path: Path) -> list[Path]:
    """Temp folders/files a killed run left beside ``path`` (``.NAME.tmp-*``, ``.NAME.old-*``)."""
    path = Path(path).absolute()
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    try:
        return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))
    except OSError:
        return []


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def clear_stale_temps(path: Path, remove: bool) -> list[Path]:
    """Name (log) the temp leftovers of a killed run beside ``path``; delete them when ``remove``.

    Call it while holding ``output_lock(path)``: every live writer holds that lock, so what is found is stale.
    """
    found = stale_temps(path)
    for p in found:
        mb = _size(p) / 1e6
        if remove:
            log.warning("removing '%s' (%.1f MB), left by an earlier run that was killed", p, mb)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
        else:
            log.warning("'%s' (%.1f MB) was left by an earlier run that was killed; "
                        "pass --overwrite (or --resume) to remove it, or delete it", p, mb)
    return found


# ------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_output_dir(path: Path, overwrite: bool = False, what: str = "output directory", *,
                      inputs: Iterable[Path | str] = ()) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename.

    On any exception the temp dir is removed and ``path`` is left exactly as it was.
    """
    path = Path(path).absolute()
    check_output_dir(path, overwrite, what, inputs=inputs)
    with output_lock(path, what):
        check_output_dir(path, overwrite, what, inputs=inputs)  # again, now that no one else can write it
        clear_stale_temps(path, remove=overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"tool": "sparse_trt", "what": what}) + "\n", encoding="utf-8")
            follow_umask_tree(tmp)  # mkdtemp makes 0700 and some writers 0600 files: look like a normal mkdir
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
    """Write a file via a temp file + rename, so readers never see a partial file.

    The file gets the mode it had, or for a new file the umask's default (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            follow_umask(Path(tmp), base=0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
