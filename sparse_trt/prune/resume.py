"""Resume storage: after each finished decoder layer, its pruned weights and records are kept in a
hidden sibling folder of the output (``.OUT.partial``), so an interrupted run continues from the
last finished layer and yields bit-identical weights. The folder is removed once OUT is written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from sparse_trt.core.atomic import atomic_write_text
from sparse_trt.core.errors import ResumeError
from sparse_trt.core.manifest import LayerRecord
from sparse_trt.models.adapters import is_target

STATE = "state.json"


def partial_dir(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.partial"


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
                if state.get("fingerprint") != fingerprint:
                    diff = sorted(
                        k for k in set(fingerprint) | set(state.get("fingerprint", {}))
                        if fingerprint.get(k) != state.get("fingerprint", {}).get(k)
                    )
                    raise ResumeError(
                        f"the interrupted run in '{root}' used different settings ({', '.join(diff)})",
                        fix="resume with the same options, or drop --resume and pass --overwrite to start over",
                    )
                ck.done = int(state["done"])
                ck._records = {int(k): v for k, v in state["records"].items()}
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
        tensors = load_file(str(f))
        mods = dict(layer.named_modules())
        for n, t in tensors.items():
            mods[n].weight.data.copy_(t)
        out = []
        for r in self._records.get(index, []):
            r = dict(r)
            r["shape"] = tuple(r["shape"])
            out.append(LayerRecord(**r))
        return out

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
