"""Streamed output: each pruned decoder layer goes straight into its own safetensors file.

``StreamingCheckpointer`` is the resume storage of a streamed run: after each finished layer,
every tensor of that layer (checkpoint names, the model's dtype) is written to
``layer-NNNNN.safetensors`` in the resume folder and the layer is counted as done, so an
interrupted run resumes at layer granularity, bit-identically. ``write_streamed_output`` turns
those files, plus one file of the tensors outside the decoder layers, into the output's
HF-named shards (hard links where a shard is one layer; byte copies where shards group layers),
with ``model.safetensors.index.json`` when there is more than one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError
from torch import nn

from sparse_trt.core.errors import ModelLoadError, ResumeError
from sparse_trt.core.manifest import LayerRecord
from sparse_trt.models.adapters import Adapter
from sparse_trt.models.safetensors_io import WeightIndex, read_header, write_sharded, write_tensors
from sparse_trt.models.streaming import StreamedLayers, tied_duplicates

from .resume import DirCheckpointer

DEFAULT_SHARD_BYTES = 5 * 1000**3  # as save_pretrained's classic default ("5GB")


class StreamingCheckpointer(DirCheckpointer):
    """Resume storage whose layer files are the output's shards (see the module docstring)."""

    adapter: Adapter

    def bind(self, adapter: Adapter) -> StreamingCheckpointer:
        self.adapter = adapter
        return self

    def layer_file(self, index: int) -> Path:
        return self.root / f"layer-{index:05d}.safetensors"

    def save_layer(self, index: int, layer: nn.Module, prefix: str, records: Sequence[LayerRecord]) -> None:
        tensors = {self.adapter.stored_name(f"{prefix}.{n}"): t for n, t in layer.state_dict().items()}
        tmp = self.layer_file(index).with_suffix(".tmp")
        write_tensors(tensors, tmp)
        tmp.replace(self.layer_file(index))
        self._records[index] = [dataclasses.asdict(r) for r in records]
        self.done = index + 1
        self._write_state()

    def load_layer(self, index: int, layer: nn.Module, prefix: str) -> list[LayerRecord]:
        f = self.layer_file(index)
        fix = f"delete '{self.root}' (or pass --overwrite instead of --resume) and start again"
        if not f.is_file():
            raise ResumeError(f"resume file '{f}' is missing", fix=fix)
        try:
            read_header(f)
            index_ = WeightIndex(self.root, {k: v for k, v in read_header(f)[0].items()})
            current = layer.state_dict(keep_vars=True)
            names = {n: self.adapter.stored_name(f"{prefix}.{n}") for n in current}
            if set(names.values()) != set(index_.entries):
                raise ResumeError(f"resume file '{f}' does not hold this layer's tensors", fix=fix)
            tensors = index_.read(names)
        except (ModelLoadError, SafetensorError, OSError) as e:
            raise ResumeError(f"resume file '{f}' is unreadable ({e})", fix=fix) from None
        for n, t in tensors.items():
            dst = current[n]
            if tuple(t.shape) != tuple(dst.shape) or t.dtype != dst.dtype:
                raise ResumeError(f"resume file '{f}': '{n}' is {t.dtype} {tuple(t.shape)}, the model has "
                                  f"{dst.dtype} {tuple(dst.shape)}", fix=fix)
            dst.data.copy_(t)
        try:
            out = []
            for r in self._records.get(index, []):
                r = dict(r)
                r["shape"] = tuple(r["shape"])
                out.append(LayerRecord(**r))
        except (TypeError, KeyError, ValueError):
            raise ResumeError(f"resume state in '{self.root}' has malformed records for layer {index}", fix=fix) from None
        return out


def write_streamed_output(folder: Path, model: nn.Module, adapter: Adapter, ck: StreamingCheckpointer,
                          num_layers: int, shard_bytes: int = DEFAULT_SHARD_BYTES,
                          source: StreamedLayers | None = None) -> list[Path]:
    """Write the model's weights into ``folder`` as HF shards from the finished layer files and the rest.

    The rest (embeddings, final norm, head: not pruned) comes from ``source``'s checkpoint where the
    walk released it, else from the model.
    """
    layers_prefix = adapter.layers_path + "."
    skip = tied_duplicates(model)
    read = source.read_rest(model, skip) if source is not None else {}
    rest = {}
    for n, t in model.state_dict().items():
        if n.startswith(layers_prefix) or n in skip:
            continue
        t = read.get(n, t)
        if t.device.type == "meta":
            raise ModelLoadError(f"'{n}' is neither in memory nor in the source checkpoint",
                                 fix="re-run without --resume; if it persists, the checkpoint lacks this tensor")
        rest[adapter.stored_name(n)] = t
    rest_file = ck.root / "rest.safetensors"
    write_tensors(rest, rest_file)
    parts = [rest_file] + [ck.layer_file(i) for i in range(num_layers)]
    return write_sharded(parts, Path(folder), shard_bytes)


def save_model_configs(model: nn.Module, folder: Path) -> None:
    """config.json (and generation_config.json) as ``save_pretrained`` writes them, without the weights."""
    config = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(folder)
