"""Resume storage: after each finished decoder layer, its pruned weights and records are kept in a
hidden sibling folder of the output (``.OUT.partial``), so an interrupted run continues from the
last finished layer and yields bit-identical weights. The folder is removed once OUT is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sparse_trt.core.atomic import atomic_write_text
from sparse_trt.core.errors import ResumeError
from sparse_trt.core.manifest import LayerRecord
from sparse_trt.models.adapters import is_target

STATE = "state.json"
_HEAD_BYTES = 1 << 20  # bytes hashed after a safetensors header (or at the start of any other file)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and a hash of a file's first bytes (for safetensors: its whole header plus 1 MiB).

    Cheap for any model size (a 70B checkpoint's shards cost a few MB of reads) and changes when a
    file is replaced at the same path.
    """
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            raw = f.read(8)
            h.update(raw)
            if len(raw) == 8:
                n = struct.unpack("<Q", raw)[0]
                h.update(f.read(min(n, 100 * 1024 * 1024)))
        h.update(f.read(_HEAD_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_head": h.hexdigest()}


def content_fingerprint(location: Path | str | None) -> dict[str, Any]:
    """Fingerprints of a model folder's config and weight files (or of one file, e.g. a .gguf or calibration text)."""
    if location is None:
        return {}
    p = Path(location)
    if p.is_file():
        return {p.name: file_fingerprint(p)}
    if not p.is_dir():
        return {}
    return {f.name: file_fingerprint(f) for f in sorted(p.iterdir())
            if f.is_file() and f.suffix in _WEIGHT_SUFFIXES and not f.name.startswith(".")}


def partial_dir(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.partial"


def model_fingerprint(source: Any, config: Any) -> dict[str, Any]:
    """Content fingerprint of a loaded model's source (a ``models.loading.ModelSource``)."""
    if source.kind == "gguf":
        return content_fingerprint(Path(source.location) / (source.gguf_file or ""))
    if source.kind == "dir":
        return content_fingerprint(source.location)
    return {"hub_commit": getattr(config, "_commit_hash", None)}


class DirCheckpointer:
    def __init__(self, root: Path, fingerprint: dict[str, Any]):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.done = 0
        self._records: dict[int, list[dict]] = {}

    @classmethod
    def open(cls, out: Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool) -> DirCheckpointer:
        root = partial_dir(out)
        ck = cls(root, fingerprint)
        state_file = root / STATE
        if root.exists():
            if resume and state_file.is_file():
                try:
                    state = json.loads(state_file.read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise ResumeError(f"resume state '{state_file}' is unreadable ({e})", fix=f"delete '{root}' and start again") from None
                old = state.get("fingerprint") if isinstance(state, dict) else None
                if not isinstance(old, dict):
                    raise ResumeError(f"resume state '{state_file}' is malformed", fix=f"delete '{root}' and start again")
                if old != fingerprint:
                    diff = sorted(k for k in set(fingerprint) | set(old) if fingerprint.get(k) != old.get(k))
                    what = {"model_files": "the model's files changed", "calib_files": "the calibration file changed"}
                    reasons = [what.get(k, k) for k in diff]
                    raise ResumeError(
                        f"cannot resume from '{root}': the interrupted run differs ({'; '.join(reasons)})",
                        fix="resume with the same model, data and options, or drop --resume and pass --overwrite "
                        "to start over",
                    )
                try:
                    ck.done = int(state["done"])
                    ck._records = {int(k): v for k, v in state["records"].items()}
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise ResumeError(f"resume state '{state_file}' is malformed", fix=f"delete '{root}' and start again") from None
                return ck
            if not resume and not overwrite:
                raise ResumeError(
                    f"an interrupted run left progress in '{root}'",
                    fix="pass --resume to continue it, or --overwrite to discard it and start over",
                )
            shutil.rmtree(root)
        root.mkdir(parents=True)
        ck._write_state()
        return ck

    def _write_state(self) -> None:
        state = {"fingerprint": self.fingerprint, "done": self.done, "records": {str(k): v for k, v in self._records.items()}}
        atomic_write_text(self.root / STATE, json.dumps(state, indent=1))

    def _file(self, index: int) -> Path:
        return self.root / f"layer_{index:05d}.safetensors"

    def save_layer(self, index: int, layer: nn.Module, prefix: str, records: Sequence[LayerRecord]) -> None:
        tensors = {n: m.weight.detach().contiguous().cpu() for n, m in layer.named_modules() if n and is_target(m)}
        tmp = self._file(index).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self._file(index))
        self._records[index] = [dataclasses.asdict(r) for r in records]
        self.done = index + 1
        self._write_state()

    def load_layer(self, index: int, layer: nn.Module, prefix: str) -> list[LayerRecord]:
        f = self._file(index)
        if not f.is_file():
            raise ResumeError(f"resume file '{f}' is missing", fix=f"delete '{self.root}' and start again")
        fix = f"delete '{self.root}' (or pass --overwrite instead of --resume) and start again"
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ResumeError(f"resume file '{f}' is unreadable ({e})", fix=fix) from None
        mods = dict(layer.named_modules())
        want = {n for n, m in mods.items() if n and is_target(m)}
        if set(tensors) != want:
            raise ResumeError(f"resume file '{f}' does not hold this layer's linears", fix=fix)
        for n, t in tensors.items():
            if tuple(t.shape) != tuple(mods[n].weight.shape):
                raise ResumeError(f"resume file '{f}': '{n}' has shape {tuple(t.shape)}, "
                                  f"the model has {tuple(mods[n].weight.shape)}", fix=fix)
        for n, t in tensors.items():
            mods[n].weight.data.copy_(t)
        out = []
        try:
            for r in self._records.get(index, []):
                r = dict(r)
                r["shape"] = tuple(r["shape"])
                out.append(LayerRecord(**r))
        except (TypeError, KeyError, ValueError):
            raise ResumeError(f"resume state in '{self.root}' has malformed records for layer {index}", fix=fix) from None
        return out

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
