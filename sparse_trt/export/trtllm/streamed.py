"""Streamed export: each rank file is written one decoder layer at a time, so no rank is ever resident.

The families' converters take a tensor getter. Here it returns the real tensors of one decoder layer
(or of the tensors outside the layers) and weightless ``meta`` tensors of the right shape for
everything else, so converting "the whole model" costs only that layer's reads; the converted layer
is split for the rank (``shard_layer``), checked, written to a part file and dropped. The parts are
then joined into ``rank{r}.safetensors`` by copying bytes (models/safetensors_io.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from sparse_trt.core.patterns import Pattern
from sparse_trt.models.safetensors_io import DTYPES, WeightIndex, merge_files, write_tensors

from .families import Converted, Family
from .sharding import Mapping, shard_ends, shard_layer

_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
_META = torch.device("meta")


def layer_of(name: str) -> int | None:
    """The decoder-layer index in an HF tensor name (None: outside the layers)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


class PartialWeights:
    """Getter/finder over a checkpoint: real tensors of one layer (or of the non-layer part), meta for the rest."""

    def __init__(self, index: WeightIndex, layer: int | None):
        self.index = index
        self.layer = layer

    def find(self, name: str) -> torch.Tensor | None:
        e = self.index.entries.get(name)
        if e is None:
            return None
        if layer_of(name) == self.layer:
            return self.index.read({name: name})[name]
        return torch.empty(e.shape, dtype=DTYPES.get(e.dtype, torch.float32), device=_META)

    def get(self, name: str) -> torch.Tensor:
        t = self.find(name)
        if t is None:
            from sparse_trt.core.errors import ModelLoadError

            raise ModelLoadError(f"tensor '{name}' is missing from the weights of '{self.index.folder}'",
                                 fix="the folder does not match its config.json; re-save the model with save_pretrained")
        return t


def convert_part(family: Family, hf: dict, index: WeightIndex, dtype_name: str, layer: int | None) -> Converted:
    w = PartialWeights(index, layer)
    return family.convert(hf, w.get, w.find, dtype_name)


def write_rank_streamed(
    rank: int,
    dest: Path,
    family: Family,
    hf: dict,
    index: WeightIndex,
    dtype_name: str,
    mapping: Mapping,
    num_layers: int,
    dtype: torch.dtype,
    check: Callable[[int, dict[str, torch.Tensor], dict, dict[str, Pattern | None]], int],
    patterns: dict[str, Pattern | None],
) -> tuple[int, int]:
    """Write ``rank{r}.safetensors`` layer by layer; returns (tensor count, weights whose pattern was checked)."""
    parts_dir = dest.parent / f".{dest.name}.parts"
    parts_dir.mkdir()
    parts: list[Path] = []
    count = checked = 0
    try:
        for local_i, global_i in enumerate(mapping.layers(rank, num_layers)):
            conv = convert_part(family, hf, index, dtype_name, global_i)
            tensors, prov = shard_layer(conv, mapping, rank, global_i, local_i, dtype)
            del conv
            checked += check(rank, tensors, prov, patterns)
            parts.append(parts_dir / f"{local_i:05d}.safetensors")
            write_tensors(tensors, parts[-1])
            count += len(tensors)
        ends = shard_ends(convert_part(family, hf, index, dtype_name, None), mapping, rank, dtype)
        if ends:
            parts.append(parts_dir / "ends.safetensors")
            write_tensors(ends, parts[-1])
            count += len(ends)
        merge_files(parts, dest, {"format": "pt", "producer": "sparse_trt"})
    finally:
        for p in parts:
            p.unlink(missing_ok=True)
        parts_dir.rmdir()
    return count, checked
