"""Read a safetensors checkpoint a few tensors at a time, and write shards without holding a model.

``WeightIndex`` maps tensor names to the shard holding them (one ``model.safetensors`` or a
``model.safetensors.index.json`` with its shards) and reads only the names asked for. The shard
writers copy raw tensor bytes between files (headers are parsed, payloads are never
deserialised), so the memory they need does not depend on the model's size.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparse_trt.core.errors import ModelLoadError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024
_COPY_CHUNK = 16 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live: a file, its data offsets (relative to the payload) and its layout."""

    file: Path
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int
    end: int
    data_start: int  # absolute offset of the file's payload

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors and metadata of one safetensors file; a truncated or foreign file is a ModelLoadError."""
    path = Path(path)
    fix = f"re-download or re-create '{path.name}'; its header or size does not match the safetensors format"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelLoadError(f"weight file '{path}' is truncated (no header)", fix=fix)
            n = struct.unpack("<Q", raw)[0]
            if n > _MAX_HEADER or 8 + n > size:
                raise ModelLoadError(f"weight file '{path}' is corrupt (header of {n} bytes in a {size}-byte file)", fix=fix)
            header = json.loads(f.read(n))
    except OSError as e:
        raise ModelLoadError(f"weight file '{path}' is unreadable: {e}", fix="check the file and its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"weight file '{path}' is corrupt (unreadable header)", fix=fix) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"weight file '{path}' is corrupt (header is not an object)", fix=fix)
    meta = header.pop("__metadata__", None) or {}
    out: dict[str, TensorEntry] = {}
    for name, e in header.items():
        try:
            b, en = (int(x) for x in e["data_offsets"])
            entry = TensorEntry(path, str(e["dtype"]), tuple(int(s) for s in e["shape"]), b, en, 8 + n)
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"weight file '{path}' is corrupt (bad entry for '{name}')", fix=fix) from None
        if entry.data_start + entry.end > size or entry.begin > entry.end:
            raise ModelLoadError(f"weight file '{path}' is truncated ('{name}' ends past the end of the file)", fix=fix)
        out[name] = entry
    return out, {str(k): str(v) for k, v in meta.items()}


class WeightIndex:
    """Tensor name -> shard of a safetensors checkpoint folder; reads only what is asked for."""

    def __init__(self, folder: Path, entries: dict[str, TensorEntry]):
        self.folder = Path(folder)
        self.entries = entries

    @staticmethod
    def has_safetensors(folder: Path | str) -> bool:
        folder = Path(folder)
        return (folder / INDEX).is_file() or (folder / SINGLE).is_file()

    @classmethod
    def open(cls, folder: Path | str) -> WeightIndex:
        folder = Path(folder)
        if (folder / INDEX).is_file():
            try:
                index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
                weight_map = index["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise ModelLoadError(f"'{folder / INDEX}' is unreadable or has no weight_map ({e})",
                                     fix="re-create the index file (the checkpoint's tool writes it)") from None
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE).is_file():
            weight_map, files = None, [SINGLE]
        else:
            raise ModelLoadError(f"'{folder}' has no {SINGLE} or {INDEX}", fix="give a folder with safetensors weights")
        entries: dict[str, TensorEntry] = {}
        for fname in files:
            path = folder / fname
            if not path.is_file():
                raise ModelLoadError(f"weight shard '{path}' named in {INDEX} is missing",
                                     fix="copy or re-download every shard the index lists")
            header, _ = read_header(path)
            if weight_map is not None:
                wanted = [k for k, v in weight_map.items() if v == fname]
                lost = [k for k in wanted if k not in header]
                if lost:
                    raise ModelLoadError(f"weight shard '{path}' lacks {len(lost)} tensor(s) its index lists, e.g. '{lost[0]}'",
                                         fix="the shard does not belong to this index: re-download the checkpoint")
                header = {k: header[k] for k in wanted}
            entries.update(header)
        return cls(folder, entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def resolve(self, name: str, prefixes: Sequence[str] = ()) -> str | None:
        """The stored name of ``name``: itself, or with one of ``prefixes`` removed or added."""
        if name in self.entries:
            return name
        for p in prefixes:
            if p and name.startswith(p + ".") and name[len(p) + 1 :] in self.entries:
                return name[len(p) + 1 :]
            if p and f"{p}.{name}" in self.entries:
                return f"{p}.{name}"
        return None

    def first_float_dtype(self) -> torch.dtype | None:
        for e in self.entries.values():
            dt = DTYPES.get(e.dtype)
            if dt is not None and dt.is_floating_point:
                return dt
        return None

    def find(self, name: str) -> torch.Tensor | None:
        """One stored tensor by name, or None when the checkpoint has no such tensor."""
        return self.read({name: name})[name] if name in self.entries else None

    def get(self, name: str) -> torch.Tensor:
        """One stored tensor by name; a missing one is an error naming the folder."""
        t = self.find(name)
        if t is None:
            raise ModelLoadError(f"tensor '{name}' is missing from the weights of '{self.folder}'",
                                 fix="the folder does not match its config.json; re-save the model with save_pretrained")
        return t

    def read(self, names: Mapping[str, str], dtypes: Mapping[str, torch.dtype | None] | None = None) -> dict[str, torch.Tensor]:
        """``{key: stored name}`` -> ``{key: tensor}``, each cast to ``dtypes[key]`` when given."""
        from safetensors import SafetensorError, safe_open

        by_file: dict[Path, list[tuple[str, str]]] = {}
        for key, stored in names.items():
            by_file.setdefault(self.entries[stored].file, []).append((key, stored))
        out: dict[str, torch.Tensor] = {}
        for path, items in by_file.items():
            try:
                with safe_open(str(path), framework="pt") as f:
                    for key, stored in items:
                        t = f.get_tensor(stored)
                        dt = (dtypes or {}).get(key)
                        out[key] = t.to(dt) if dt is not None and t.dtype != dt else t
            except (SafetensorError, OSError) as e:
                raise ModelLoadError(f"weight shard '{path}' is unreadable ({e})",
                                     fix="re-download or re-create that shard") from None
        return out


# ---------------------------------------------------------------------------- writing


def _header_bytes(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    off = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def merge_files(sources: Sequence[Path], dest: Path, metadata: Mapping[str, str] | None = None) -> list[str]:
    """Write one safetensors file holding every tensor of ``sources`` (raw byte copies). Returns the names."""
    plan: list[tuple[str, TensorEntry]] = []
    for src in sources:
        header, _ = read_header(src)
        plan.extend(sorted(header.items(), key=lambda kv: kv[1].begin))
    names = [n for n, _ in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tensor names while merging into {dest}")
    head = _header_bytes([(n, e.dtype, e.shape, e.nbytes) for n, e in plan], metadata or {"format": "pt"})
    with open(dest, "wb") as out:
        out.write(head)
        for src in sources:
            items = [e for n, e in plan if e.file == Path(src)]
            with open(src, "rb") as f:
                for e in items:
                    f.seek(e.data_start + e.begin)
                    left = e.nbytes
                    while left:
                        buf = f.read(min(left, _COPY_CHUNK))
                        if not buf:
                            raise ModelLoadError(f"'{src}' ended early while copying", fix="re-run the job")
                        out.write(buf)
                        left -= len(buf)
    return names


def write_tensors(tensors: Mapping[str, torch.Tensor], dest: Path, metadata: Mapping[str, str] | None = None) -> None:
    """A safetensors file of ``tensors`` (CPU copies one at a time; the bytes are written as they are)."""
    entries = []
    for name, t in tensors.items():
        if t.dtype not in _CODES:
            raise ValueError(f"dtype {t.dtype} of '{name}' has no safetensors code")
        entries.append((name, _CODES[t.dtype], tuple(t.shape), t.numel() * t.element_size()))
    with open(dest, "wb") as out:
        out.write(_header_bytes(entries, metadata or {"format": "pt"}))
        for t in tensors.values():
            c = t.detach().to("cpu").contiguous()
            if c.numel():
                out.write(memoryview(c.view(torch.uint8).reshape(-1).numpy()))
        out.flush()
        os.fsync(out.fileno())


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link ``src`` as ``dest`` (no bytes copied); copy when the filesystem cannot link."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_sharded(parts: Sequence[Path], folder: Path, shard_bytes: int) -> list[Path]:
    """HF-named output shards from ``parts`` (safetensors files, in order), grouped up to ``shard_bytes``.

    One group: ``model.safetensors``; several: ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``. A group of one part is hard-linked, not copied.
    """
    groups: list[list[Path]] = []
    size = 0
    for p in parts:
        n = Path(p).stat().st_size
        if groups and size + n <= shard_bytes:
            groups[-1].append(Path(p))
            size += n
        else:
            groups.append([Path(p)])
            size = n
    names = [SINGLE] if len(groups) == 1 else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map: dict[str, str] = {}
    total = 0
    written = []
    for group, name in zip(groups, names, strict=True):
        dest = Path(folder) / name
        if len(group) == 1:
            link_or_copy(group[0], dest)
            header, _ = read_header(dest)
            tensor_names: Iterable[str] = header
            total += sum(e.nbytes for e in header.values())
        else:
            tensor_names = merge_files(group, dest)
            total += sum(e.nbytes for e in read_header(dest)[0].values())
        for t in tensor_names:
            weight_map[t] = name
        written.append(dest)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (Path(folder) / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written
