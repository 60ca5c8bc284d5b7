"""Write a pruned HF folder as a TensorRT-LLM unified checkpoint (config.json + rank{r}.safetensors).

Pure torch + safetensors: runs on a CPU-only machine. The N:M pattern is checked on every source
weight before export and on every shard after it; nothing is written unless all checks pass.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import sparse_trt
from sparse_trt.core.atomic import atomic_output_dir, check_output_dir
from sparse_trt.core.errors import InputError, ManifestError, ModelLoadError
from sparse_trt.core.jsonio import read_json_object
from sparse_trt.core.manifest import MANIFEST_NAME, Manifest
from sparse_trt.core.patterns import NM, Pattern, nm_violations, parse_pattern
from sparse_trt.models.safetensors_io import WeightIndex

from .errors import NotPrunedError, PatternBrokenError
from .families import Converted, Family, family_for, with_architecture
from .quantized import QUANT_FILES, float_view, prepare_quantized
from .sharding import Mapping, Segment, check_parallelism, shard
from .streamed import convert_part, write_rank_streamed

log = logging.getLogger(__name__)

EXPORT_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "generation_config.json", "chat_template.jinja",
)


def parse_export_dtype(text: str) -> torch.dtype:
    try:
        return EXPORT_DTYPES[str(text).strip().lower()]
    except KeyError:
        raise InputError(
            f"dtype '{text}' is not supported for TensorRT-LLM export",
            fix=f"use --dtype one of {', '.join(EXPORT_DTYPES)} (float16 or bfloat16 for Sparse Tensor Cores)",
        ) from None


@dataclass(frozen=True)
class RankFile:
    rank: int
    file: str
    tensors: int
    bytes: int
    layers: tuple[int, ...]


@dataclass
class ExportResult:
    out: Path
    family: str
    architecture: str
    dtype: str
    tp: int
    pp: int
    pattern: str | None
    ranks: list[RankFile] = field(default_factory=list)
    checked_weights: int = 0  # sharded linear weights whose N:M pattern was verified
    config: dict[str, Any] = field(default_factory=dict)


def _read_config(model_dir: Path) -> dict[str, Any]:
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder '{model_dir}' does not exist or is not a folder",
                             fix="pass the output folder of `sparse-trt prune`")
    p = model_dir / "config.json"
    if not p.is_file():
        raise ModelLoadError(f"model folder '{model_dir}' has no config.json",
                             fix="pass a Hugging Face model folder (the output of `sparse-trt prune`)")
    cfg = read_json_object(p, ModelLoadError, fix="re-save the model")
    return cfg


def load_patterns(model_dir: Path, allow_dense: bool) -> tuple[Manifest | None, dict[str, Pattern | None], dict[str, int]]:
    """Manifest (or None for a dense export), HF linear -> pattern, HF linear -> N:M in_dim."""
    if not (model_dir / MANIFEST_NAME).is_file():
        if allow_dense:
            return None, {}, {}
        raise NotPrunedError(
            f"'{model_dir}' has no {MANIFEST_NAME}: it is not a model folder written by `sparse-trt prune`",
            fix=f"prune it first (`sparse-trt prune {model_dir} -o PRUNED`), or pass --allow-dense to export the dense baseline",
        )
    manifest = Manifest.load(model_dir)
    patterns: dict[str, Pattern | None] = {}
    in_dims: dict[str, int] = {}
    for rec in manifest.layers:
        patterns[rec.name] = None if rec.pattern is None else parse_pattern(rec.pattern)
        in_dims[rec.name] = rec.in_dim
    return manifest, patterns, in_dims


def check_sources(weights: WeightIndex, patterns: dict[str, Pattern | None], in_dims: dict[str, int]) -> None:
    """Every weight the manifest calls N:M must hold its pattern before we touch it."""
    for name, pat in patterns.items():
        if not isinstance(pat, NM):
            continue
        w = weights.find(name + ".weight")
        if w is None:
            raise ManifestError(
                f"sparsity.json lists '{name}' but '{weights.folder}' has no tensor '{name}.weight'",
                fix="the manifest belongs to another model; re-run `sparse-trt prune`",
            )
        v = nm_violations(w, pat, in_dims.get(name, 1))
        if v != 0:
            what = f"its input dimension is not a multiple of {pat.m}" if v < 0 else f"{v} groups of {pat.m} hold more than {pat.n} non-zeros"
            raise PatternBrokenError(
                f"'{name}.weight' in '{weights.folder}' does not hold pattern {pat}: {what} (corrupted or edited weights?)",
                fix=f"check it with `sparse-trt verify {weights.folder}`, then re-run `sparse-trt prune`",
            )


def check_shard(rank: int, tensors: dict[str, torch.Tensor], prov: dict[str, list[Segment]], patterns: dict[str, Pattern | None]) -> int:
    """Verify the N:M pattern of every sharded weight segment that comes from a pruned linear."""
    checked = 0
    for name, segs in prov.items():
        w = tensors[name]
        for src, a, b in segs:
            pat = patterns.get(src)
            if not isinstance(pat, NM):
                continue
            v = nm_violations(w[a:b], pat, 1)
            if v != 0:
                raise PatternBrokenError(
                    f"after export, rows {a}:{b} of '{name}' in rank{rank}.safetensors (from '{src}') break pattern {pat}",
                    fix="this is a bug in the exporter's splitting; please report it with the model config",
                )
            checked += 1
    return checked


def build_config(conv: Converted, mapping: Mapping, pattern: str | None) -> dict[str, Any]:
    cfg = dict(conv.config)
    cfg["mapping"] = mapping.to_config()
    if conv.parallel_embedding:
        cfg["use_parallel_embedding"] = mapping.tp > 1
    cfg["quantization"] = {"quant_algo": None, "kv_cache_quant_algo": None}
    cfg["producer"] = {"name": "sparse_trt", "version": sparse_trt.__version__, "sparsity_pattern": pattern}
    return cfg


def export_trtllm(
    model_dir: Path | str,
    out: Path | str,
    *,
    dtype: torch.dtype,
    tp: int = 1,
    pp: int = 1,
    overwrite: bool = False,
    allow_dense: bool = False,
    progress: Callable[[int, int], None] | None = None,
    streaming: bool = True,
) -> ExportResult:
    """Export a (pruned) HF folder to a TensorRT-LLM unified checkpoint at ``out``, atomically.

    ``streaming`` (unquantized exports): each rank file is written one decoder layer at a time
    (export/trtllm/streamed.py), so memory does not grow with the model; False converts the whole
    model first.
    """
    model_dir = Path(model_dir)
    out = Path(out)
    check_output_dir(out, overwrite, "checkpoint directory")
    hf = with_architecture(_read_config(model_dir))
    family: Family = family_for(hf, str(model_dir))
    manifest, patterns, in_dims = load_patterns(model_dir, allow_dense)
    if manifest is not None and isinstance(manifest.parsed_pattern, NM) and not any(isinstance(p, NM) for p in patterns.values()):
        raise ManifestError(f"'{model_dir}/{MANIFEST_NAME}' claims {manifest.pattern} but lists no N:M linear: "
                            "no weight could be verified", fix=f"check it with `sparse-trt verify {model_dir}`; re-run `sparse-trt prune`")
    weights = WeightIndex.open(model_dir)
    check_sources(weights, patterns, in_dims)
    dtype_name = str(dtype).removeprefix("torch.")
    if dtype_name not in EXPORT_DTYPES:
        raise InputError(f"dtype {dtype_name} is not supported for export", fix=f"use one of {', '.join(EXPORT_DTYPES)}")
    index = WeightIndex.open(model_dir) if streaming and not any((model_dir / q).is_file() for q in QUANT_FILES) else None
    if index is not None:  # weightless conversion: shapes for the checks and config; data is read per layer
        conv = convert_part(family, hf, index, dtype_name, -1)
    else:
        conv = family.convert(hf, weights.get, weights.find, dtype_name)
    qexp = prepare_quantized(model_dir, conv, family) if index is None else None  # quantization.json: FP8 / INT8-SQ
    mapping = check_parallelism(conv, family, tp, pp, patterns)
    pattern = manifest.pattern if manifest is not None else None
    result = ExportResult(out.absolute(), family.name, conv.config["architecture"], dtype_name, tp, pp, pattern)
    result.config = build_config(conv, mapping, pattern)
    if qexp is not None:
        result.config["quantization"] = qexp.config_block(mapping)
    with atomic_output_dir(out, overwrite=overwrite, what="checkpoint directory") as tmp:
        for rank in range(mapping.world_size):
            if index is not None:
                fname = f"rank{rank}.safetensors"
                n, checked = write_rank_streamed(rank, tmp / fname, family, hf, index, dtype_name, mapping,
                                                 len(conv.layers), dtype, check_shard, patterns)
                result.checked_weights += checked
                if rank == mapping.world_size - 1 and manifest is not None and isinstance(manifest.parsed_pattern, NM) \
                        and result.checked_weights == 0:
                    raise ManifestError(f"no weight of '{model_dir}' was verified as {manifest.pattern} in the export",
                                        fix=f"check it with `sparse-trt verify {model_dir}`; re-run `sparse-trt prune`")
                result.ranks.append(RankFile(rank, fname, n, (tmp / fname).stat().st_size,
                                             tuple(mapping.layers(rank, len(conv.layers)))))
                if progress is not None:
                    progress(rank, mapping.world_size)
                continue
            tensors, prov = shard(conv, mapping, rank, dtype if qexp is None else qexp.source_dtype)
            if qexp is not None:
                tensors = qexp.finish_rank(tensors, mapping, rank, dtype)
            result.checked_weights += check_shard(rank, tensors if qexp is None else float_view(tensors), prov, patterns)
            if rank == mapping.world_size - 1 and manifest is not None and isinstance(manifest.parsed_pattern, NM) \
                    and result.checked_weights == 0:
                raise ManifestError(f"no weight of '{model_dir}' was verified as {manifest.pattern} in the export",
                                    fix=f"check it with `sparse-trt verify {model_dir}`; re-run `sparse-trt prune`")
            fname = f"rank{rank}.safetensors"
            save_file(tensors, str(tmp / fname), metadata={"format": "pt", "producer": "sparse_trt"})
            result.ranks.append(RankFile(rank, fname, len(tensors), (tmp / fname).stat().st_size,
                                         tuple(mapping.layers(rank, len(conv.layers)))))
            if progress is not None:
                progress(rank, mapping.world_size)
        (tmp / "config.json").write_text(json.dumps(result.config, indent=4) + "\n", encoding="utf-8")
        if manifest is not None:
            shutil.copy2(model_dir / MANIFEST_NAME, tmp / MANIFEST_NAME)
        for name in TOKENIZER_FILES + QUANT_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
    log.info("exported %s to %s (%d ranks, %d sparse weights verified)", model_dir, out, mapping.world_size, result.checked_weights)
    return result
