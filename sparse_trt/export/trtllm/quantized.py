"""Quantized TensorRT-LLM checkpoints: FP8 / INT8 SmoothQuant tensors from a folder's quantization.json.

The writer shards the (smoothed) weights in their stored dtype exactly as for an unquantized export;
this module then quantizes each rank's linear weights with the scales the quantize stage computed
and adds TensorRT-LLM 1.2's scale tensors (names as its ``FP8Linear`` / ``Int8SmoothQuantLinear``
parameters and as NVIDIA ModelOpt 0.47's exporter writes them):

* ``{linear}.weight``: float8_e4m3fn (FP8) or int8 (INT8-SQ);
* ``{linear}.weights_scaling_factor``: float32, ``(1,)`` (FP8) or one per output row (INT8-SQ,
  split with the rows: per head for QKV, on dim 0 for column-parallel, replicated for row-parallel);
* ``{linear}.activation_scaling_factor``: float32 ``(1,)``, replicated;
* ``{linear}.prequant_scaling_factor`` (INT8-SQ): the SmoothQuant multipliers ``[in]`` in the
  checkpoint dtype, split on the input dim for row-parallel linears, replicated otherwise;
* ``attention.{k,v,kv}_cache_scaling_factor`` (quantized KV cache): float32 ``(1,)`` per layer.

Elementwise quantization commutes with splitting, so per-rank quantization with split scales equals
quantizing the whole tensor first (what ModelOpt does) bit for bit.

Linears that ``quantize --exclude`` kept out (listed in quantization.json's ``exclude_modules``) keep
their weight in the export dtype with no scale tensors, and the config's ``exclude_modules`` names
them as TensorRT-LLM names its modules: ``transformer.layers.{i}.{attention.qkv|attention.dense|
mlp.fc|mlp.gate|mlp.proj}``, exact names (TensorRT-LLM matches each entry with ``fnmatch`` against its
module names, and its build-time gate/up fusion for FP8 looks the ``mlp.fc`` name up literally), with
``i`` the layer's index within its pipeline rank (TensorRT-LLM numbers each rank's layers from 0, and
one config serves every rank).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from sparse_trt.quantize import scales as sc
from sparse_trt.quantize.errors import QuantExportError, QuantSpecError
from sparse_trt.quantize.formats import FORMATS, KV_FORMATS, QuantFormat
from sparse_trt.quantize.spec import QuantSpec

from .families import Converted, Family, Linear
from .sharding import Mapping, _shard_linear

_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.(.+)\.weight$")
_HF_LAYER_RE = re.compile(r"\.(\d+)\.[^.]+$")


class QuantizedExport:
    """Prepares a Converted model for quantized export and finishes each rank's tensors."""

    def __init__(self, spec: QuantSpec, conv: Converted, family: Family) -> None:
        if spec.family != family.name:
            raise QuantExportError(
                f"quantization.json was made for the {spec.family} family but the model exports as {family.name}",
                fix="re-run `sparse-trt quantize` on this model",
            )
        if spec.format not in FORMATS:
            raise QuantSpecError(f"quantization.json names unknown format '{spec.format}'",
                                 fix=f"this sparse_trt exports {', '.join(FORMATS)}; re-run `sparse-trt quantize`")
        self.spec = spec
        self.fmt: QuantFormat = FORMATS[spec.format]
        self.kv = KV_FORMATS.get(spec.kv_cache) if spec.kv_cache else None
        self.conv = conv
        self.scales: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.source_dtype: torch.dtype | None = None
        excluded = set(spec.exclude_modules)
        self.excluded: set[tuple[int, str]] = set()  # (layer, TensorRT-LLM local name) kept unquantized
        self.linears: dict[int, list[str]] = {}  # layer -> its TensorRT-LLM linear names, in order
        found: set[str] = set()
        for i, layer in enumerate(conv.layers):
            for local, item in layer.items():
                if not isinstance(item, Linear):
                    continue
                self.linears.setdefault(i, []).append(local)
                names = list(dict.fromkeys(item.sources))
                out = [n for n in names if n in excluded]
                found.update(out)
                if out and len(out) < len(names):
                    raise QuantSpecError(
                        f"quantization.json excludes {out} but not {[n for n in names if n not in excluded]}, which "
                        f"TensorRT-LLM fuses with them into transformer.layers.{i}.{local}",
                        fix="re-run `sparse-trt quantize` (its --exclude takes whole fused groups)",
                    )
                if out:
                    self.excluded.add((i, local))
                else:
                    self._prepare(i, local, item)
        unknown = sorted(excluded - found - {"lm_head"})
        if unknown:
            raise QuantSpecError(f"quantization.json excludes {unknown[:3]}, which the model does not have",
                                 fix="the quantization belongs to another model; re-run `sparse-trt quantize`")

    # ------------------------------------------------------------------ unsharded preparation

    def _prepare(self, i: int, local: str, lin: Linear) -> None:
        names = list(dict.fromkeys(lin.sources))
        entries = [self.spec.linear(n) for n in names]
        if any(e.group != entries[0].group for e in entries) or not set(names) <= set(entries[0].group):
            raise QuantSpecError(
                f"quantization.json groups {entries[0].group} but TensorRT-LLM fuses {tuple(names)} into "
                f"transformer.layers.{i}.{local}",
                fix="re-run `sparse-trt quantize` with this sparse_trt version",
            )
        weights = list(lin.parts) if lin.kind == "qkv" and lin.parts is not None else [lin.weight]
        if len(names) != len(weights):  # GPT-2 style fused source; not a quantized family today
            raise QuantExportError(f"'{names[0]}' is fused in the source model", fix="export this model unquantized")
        self.source_dtype = self.source_dtype or weights[0].dtype
        fmt = self.fmt
        act = torch.tensor([entries[0].input_scale], dtype=torch.float32)
        if not fmt.smoothquant:
            ws = torch.tensor([entries[0].weight_scale], dtype=torch.float32)
            amax = torch.max(torch.stack([sc.tensor_amax(w) for w in weights]))
            if bool(sc.scale_from_amax(amax, fmt.qmax) > ws):  # the group's scale covers every member
                raise QuantSpecError(
                    f"the weights of {tuple(names)} do not match their quantization.json scale (edited after quantize?)",
                    fix="re-run `sparse-trt quantize` on the current weights",
                )
            self.scales[(i, local)] = {"weights_scaling_factor": ws, "activation_scaling_factor": act}
            return
        smoothed, row_scales = [], []
        prequant = self.spec.vector(names[0], "prequant")
        for n, w in zip(names, weights, strict=True):
            s = self.spec.vector(n, "smoothing")
            w2 = sc.resmooth_weight(sc.smooth_weight(w, s), s.to(w.dtype), prequant)
            ws = self.spec.vector(n, "weight_scale")
            if not torch.equal(sc.scale_from_amax(sc.row_amax(w2), fmt.qmax), ws):
                raise QuantSpecError(
                    f"the weights of '{n}' do not match its quant_scales.safetensors row scales (edited after quantize?)",
                    fix="re-run `sparse-trt quantize` on the current weights",
                )
            smoothed.append(w2)
            row_scales.append(ws)
        if lin.kind == "qkv":
            lin.parts = tuple(smoothed)  # type: ignore[assignment]
        else:
            lin.weight = smoothed[0]
        self.scales[(i, local)] = {
            "activation_scaling_factor": act,
            "prequant_scaling_factor": prequant,
            "_rows": torch.cat(row_scales),  # split per rank below
            **({"_row_parts": tuple(row_scales)} if lin.kind == "qkv" else {}),  # type: ignore[dict-item]
        }

    # ------------------------------------------------------------------------ per rank

    def config_block(self, mapping: Mapping) -> dict[str, Any]:
        return {
            "quant_algo": self.fmt.quant_algo,
            "kv_cache_quant_algo": None if self.kv is None else self.kv.quant_algo,
            "exclude_modules": ["lm_head", *self.trtllm_excludes(mapping)],
        }

    def trtllm_excludes(self, mapping: Mapping) -> list[str]:
        """TensorRT-LLM module names of the excluded linears, valid for every rank of ``mapping``.

        Each rank's layers are numbered from 0 and all ranks read the same list, so the list is the union
        over ranks of their local names; it is refused when on some rank it would also name a linear
        that rank quantizes (different exclusions in different pipeline stages).
        """
        n = len(self.conv.layers)
        per_rank: list[tuple[set[str], set[str]]] = []  # (excluded, present) local names per rank
        for rank in range(mapping.world_size):
            ex, present = set(), set()
            for j, gi in enumerate(mapping.layers(rank, n)):
                for local in self.linears.get(gi, []):
                    name = f"transformer.layers.{j}.{local}"
                    present.add(name)
                    if (gi, local) in self.excluded:
                        ex.add(name)
            per_rank.append((ex, present))
        union = set().union(*(ex for ex, _ in per_rank))
        for rank, (ex, present) in enumerate(per_rank):
            wrong = sorted((union & present) - ex)
            if wrong:
                ids = mapping.layers(rank, n)
                raise QuantExportError(
                    f"--pp {mapping.pp}: TensorRT-LLM numbers the layers of each pipeline rank from 0 and applies one "
                    f"exclude_modules list to all ranks, so the exclusions of quantization.json cannot be written: on rank "
                    f"{rank} (layers {ids[0]}..{ids[-1]}) it would also keep {wrong[0]} unquantized",
                    fix="export with --pp 1 (tensor parallelism is fine), or quantize with --exclude patterns that pick "
                        "the same linears in every pipeline stage (e.g. '*mlp.down_proj')",
                )
        order = {(f"transformer.layers.{j}.{local}"): (j, k) for j in range(n) for k, local in
                 enumerate(self.linears.get(j, []))}
        return sorted(union, key=lambda x: order.get(x, (n, 0)))

    def _rank_scales(self, lin: Linear, scales: dict[str, Any], mapping: Mapping, rank: int) -> dict[str, torch.Tensor]:
        tp, r = mapping.tp, mapping.tp_rank(rank)
        out = {k: v for k, v in scales.items() if not k.startswith("_")}
        if not self.fmt.smoothquant:
            return out
        if lin.kind == "qkv":
            parts = tuple(p[:, None] for p in scales["_row_parts"])
            rows, _, _ = _shard_linear(Linear("qkv", lin.sources, parts=parts), self.conv, tp, r)  # type: ignore[arg-type]
        elif lin.kind == "col":
            rows, _, _ = _shard_linear(Linear("col", lin.sources, scales["_rows"][:, None]), self.conv, tp, r)
        else:
            rows = scales["_rows"][:, None]
            pq, _, _ = _shard_linear(Linear("row", lin.sources, scales["prequant_scaling_factor"][None, :]), self.conv, tp, r)
            out["prequant_scaling_factor"] = pq.reshape(-1)
        out["weights_scaling_factor"] = rows.reshape(-1)
        return out

    def finish_rank(self, tensors: dict[str, torch.Tensor], mapping: Mapping, rank: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Quantize the rank's linear weights, add their scales, cast everything else to ``dtype``."""
        layer_ids = mapping.layers(rank, len(self.conv.layers))
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            m = _LAYER_RE.match(name)
            key = (layer_ids[int(m.group(1))], m.group(2)) if m else None
            if key is None or key not in self.scales:
                out[name] = t.to(dtype).contiguous()
                continue
            lin = self.conv.layers[key[0]][key[1]]
            assert isinstance(lin, Linear)
            rs = self._rank_scales(lin, self.scales[key], mapping, rank)
            if self.fmt.smoothquant:
                q = sc.quantize_per_row(t, rs["weights_scaling_factor"], self.fmt.qmax, self.fmt.weight_dtype)
            else:
                q = sc.quantize_per_tensor(t, rs["weights_scaling_factor"], self.fmt.weight_dtype)
            prefix = name[: -len(".weight")]
            out[name] = q.contiguous()
            for k, v in rs.items():
                v = v.to(dtype) if k == "prequant_scaling_factor" else v.float()
                out[f"{prefix}.{k}"] = v.contiguous().clone()
        if self.kv is not None:
            for entry in self.spec.kv:
                gi = _hf_layer_index(entry.layer)
                if gi in layer_ids:
                    p = f"transformer.layers.{layer_ids.index(gi)}.attention."
                    k = torch.tensor([entry.k_scale], dtype=torch.float32)
                    v = torch.tensor([entry.v_scale], dtype=torch.float32)
                    out[p + "k_cache_scaling_factor"] = k
                    out[p + "v_cache_scaling_factor"] = v
                    out[p + "kv_cache_scaling_factor"] = torch.maximum(k, v)
        return out


def _hf_layer_index(name: str) -> int:
    m = _HF_LAYER_RE.search(name)
    if m is None:
        raise QuantSpecError(f"quantization.json names KV-cache layer '{name}' without a layer index",
                             fix="re-run `sparse-trt quantize`")
    return int(m.group(1))


def float_view(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float8 tensors as float32 (for the N:M check, which compares with zero)."""
    return {k: (v.float() if v.dtype.is_floating_point and v.element_size() == 1 else v) for k, v in tensors.items()}


QUANT_FILES = ("quantization.json", "quant_scales.safetensors")  # copied into the checkpoint for provenance


def prepare_quantized(model_dir, conv: Converted, family: Family) -> QuantizedExport | None:
    """The quantized export of ``model_dir`` (None when it has no quantization.json); smooths ``conv`` in place."""
    from sparse_trt.quantize.spec import load_quant_spec

    spec = load_quant_spec(model_dir)
    return None if spec is None else QuantizedExport(spec, conv, family)
