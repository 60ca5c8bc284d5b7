"""Tensor- and pipeline-parallel splitting, as TensorRT-LLM 1.2 does it, plus the checks that refuse bad splits.

* rank ``r`` = ``pp_rank * tp + tp_rank`` (TensorRT-LLM's Mapping);
* column-parallel weights (and their biases) split on dim 0; row-parallel weights on dim 1, their
  biases replicated (added once after the all-reduce);
* fused QKV: q, k and v are split per head separately and concatenated per rank; when tp exceeds
  the KV heads each KV head is repeated ``tp // kv_heads`` times first (``dup_kv_weight``);
* ``lm_head`` is zero-padded to a multiple of tp rows (``pad_vocab_size``) and split on dim 0;
  embeddings are replicated (``use_parallel_embedding`` is off, TensorRT-LLM's default), except for
  families whose TensorRT-LLM config forces a parallel embedding (Gemma: padded and split as the head);
* pipeline rank ``p`` holds a contiguous range of layers renumbered from 0, the embeddings on the
  first rank, ``ln_f`` and ``lm_head`` on the last.

A row-parallel split cuts the *input* dimension, the one N:M groups run along: a tp that does not
leave a multiple of M inputs per rank would cut groups in two, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_trt.core.patterns import NM, Pattern

from .errors import ShardingError
from .families import Converted, Family, Linear

# Provenance of a sharded linear weight: (HF source linear, first row, end row) within the rank tensor.
Segment = tuple[str, int, int]


@dataclass(frozen=True)
class Mapping:
    tp: int
    pp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def pp_rank(self, rank: int) -> int:
        return rank // self.tp

    def layers(self, rank: int, num_layers: int) -> list[int]:
        return torch.arange(num_layers).tensor_split(self.pp)[self.pp_rank(rank)].tolist()

    def to_config(self) -> dict:
        return {
            "world_size": self.world_size,
            "gpus_per_node": 8,
            "cp_size": 1,
            "tp_size": self.tp,
            "pp_size": self.pp,
            "moe_tp_size": self.tp,
            "moe_ep_size": 1,
            "moe_cluster_size": 1,
        }


def pad_rows(n: int, tp: int) -> int:
    return (n + tp - 1) // tp * tp


def kv_heads_per_rank(num_kv_heads: int, tp: int) -> int:
    return max(num_kv_heads // tp, 1)


# --------------------------------------------------------------------------------------- checks


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _tp_problem(conv: Converted, tp: int, patterns: dict[str, Pattern | None]) -> str | None:
    """Why ``tp`` cannot split ``conv`` (None when it can)."""
    nh, nkv = conv.num_heads, conv.num_kv_heads
    if nh % tp:
        return f"{nh} attention heads are not divisible by tp={tp}"
    if nkv % tp and tp % nkv:
        return f"{nkv} KV heads neither divide nor are divisible by tp={tp}"
    for i, layer in enumerate(conv.layers):
        for local, item in layer.items():
            if not isinstance(item, Linear):
                continue
            name = f"transformer.layers.{i}.{local}"
            if item.kind == "col" and item.weight is not None and item.weight.shape[0] % tp:
                return f"'{name}' has {item.weight.shape[0]} output rows, not divisible by tp={tp}"
            if item.kind == "row" and item.weight is not None:
                n_in = item.weight.shape[1]
                if n_in % tp:
                    return f"'{name}' has {n_in} inputs, not divisible by tp={tp}"
                pat = patterns.get(item.sources[0])
                if isinstance(pat, NM) and (n_in // tp) % pat.m:
                    return (
                        f"'{name}' (HF '{item.sources[0]}', {n_in} inputs, pattern {pat}) would get {n_in // tp} "
                        f"inputs per rank, cutting groups of {pat.m} weights in two"
                    )
    return None


def check_parallelism(conv: Converted, family: Family, tp: int, pp: int, patterns: dict[str, Pattern | None]) -> Mapping:
    """Refuse a tp/pp that does not fit, naming the layer and the values that would work."""
    if tp < 1 or pp < 1:
        raise ShardingError(f"--tp {tp} / --pp {pp}: both must be at least 1", fix="use --tp 1 --pp 1 for one GPU")
    problem = _tp_problem(conv, tp, patterns)
    if problem:
        valid = [d for d in _divisors(conv.num_heads) if _tp_problem(conv, d, patterns) is None]
        raise ShardingError(f"--tp {tp} does not fit this model: {problem}", fix=f"use --tp one of {valid}")
    n_layers = len(conv.layers)
    if pp > 1 and not family.pipeline_parallel:
        raise ShardingError(
            f"--pp {pp}: TensorRT-LLM's {family.name} model has no pipeline-parallel checkpoint support",
            fix="use --pp 1 (tensor parallelism with --tp works)",
        )
    if n_layers % pp:
        # TensorRT-LLM 1.2 would give the first ranks one extra layer, but earlier releases silently
        # dropped the remainder (num_layers // pp per rank): an uneven split is not portable.
        raise ShardingError(
            f"--pp {pp} does not divide the model's {n_layers} decoder layers",
            fix=f"use --pp one of {_divisors(n_layers)}",
        )
    return Mapping(tp, pp)


# ------------------------------------------------------------------------------------- sharding


def _split(t: torch.Tensor, tp: int, rank: int, dim: int) -> torch.Tensor:
    if tp == 1:
        return t
    return t.chunk(tp, dim=dim)[rank]


def dup_kv(t: torch.Tensor, num_kv_heads: int, tp: int) -> torch.Tensor:
    """Repeat each KV head (rows ``[head, head_size, ...]``) so tp ranks get one head each."""
    if num_kv_heads >= tp:
        return t
    reps = tp // num_kv_heads
    rest = t.shape[1:]
    return t.reshape(num_kv_heads, -1, *rest).repeat_interleave(reps, dim=0).reshape(-1, *rest)


def _shard_linear(lin: Linear, conv: Converted, tp: int, r: int) -> tuple[torch.Tensor, torch.Tensor | None, list[Segment]]:
    if lin.kind == "qkv":
        assert lin.parts is not None
        q, k, v = lin.parts
        nkv = conv.num_kv_heads
        wq = _split(q, tp, r, 0)
        wk = _split(dup_kv(k, nkv, tp), tp, r, 0)
        wv = _split(dup_kv(v, nkv, tp), tp, r, 0)
        w = torch.cat([wq, wk, wv], 0)
        segs = [(lin.sources[0], 0, wq.shape[0]), (lin.sources[1], wq.shape[0], wq.shape[0] + wk.shape[0]),
                (lin.sources[2], wq.shape[0] + wk.shape[0], w.shape[0])]
        b = None
        if lin.bias_parts is not None:
            bq, bk, bv = lin.bias_parts
            b = torch.cat([_split(bq, tp, r, 0), _split(dup_kv(bk, nkv, tp), tp, r, 0), _split(dup_kv(bv, nkv, tp), tp, r, 0)])
        return w, b, segs
    assert lin.weight is not None
    if lin.kind == "col":
        w = _split(lin.weight, tp, r, 0)
        b = None if lin.bias is None else _split(lin.bias, tp, r, 0)
    else:
        w = _split(lin.weight, tp, r, 1)
        b = lin.bias
    return w, b, [(lin.sources[0], 0, w.shape[0])]


def shard_layer(conv: Converted, mapping: Mapping, rank: int, global_i: int, local_i: int,
                dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, list[Segment]]]:
    """One decoder layer's tensors in one rank file (contiguous, in ``dtype``) and their provenance."""
    tp_rank = mapping.tp_rank(rank)
    out: dict[str, torch.Tensor] = {}
    prov: dict[str, list[Segment]] = {}
    prefix = f"transformer.layers.{local_i}."
    for local, item in conv.layers[global_i].items():
        if isinstance(item, Linear):
            w, b, segs = _shard_linear(item, conv, mapping.tp, tp_rank)
            out[prefix + local + ".weight"] = w
            prov[prefix + local + ".weight"] = segs
            if b is not None:
                out[prefix + local + ".bias"] = b
        else:
            out[prefix + local] = item
    return {k: v.to(dtype).contiguous().clone() for k, v in out.items()}, prov


def shard_ends(conv: Converted, mapping: Mapping, rank: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors outside the decoder layers in one rank file: embeddings (first pp rank), ln_f and head (last)."""
    tp, tp_rank, pp_rank = mapping.tp, mapping.tp_rank(rank), mapping.pp_rank(rank)
    out: dict[str, torch.Tensor] = {}
    if pp_rank == 0:
        out.update(conv.first)
        if conv.parallel_embedding and tp > 1:  # rows padded to a multiple of tp and split, as the head
            emb = out["transformer.vocab_embedding.weight"]
            padded = pad_rows(emb.shape[0], tp)
            if padded != emb.shape[0]:
                emb = torch.nn.functional.pad(emb, (0, 0, 0, padded - emb.shape[0]))
            out["transformer.vocab_embedding.weight"] = _split(emb, tp, tp_rank, 0)
    if pp_rank == mapping.pp - 1:
        out.update(conv.last)
        if conv.lm_head is not None:
            head = conv.lm_head
            padded = pad_rows(head.shape[0], tp)
            if padded != head.shape[0]:
                head = torch.nn.functional.pad(head, (0, 0, 0, padded - head.shape[0]))
            out["lm_head.weight"] = _split(head, tp, tp_rank, 0)
    return {k: v.to(dtype).contiguous().clone() for k, v in out.items()}


def shard(conv: Converted, mapping: Mapping, rank: int, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, list[Segment]]]:
    """The tensors of one rank file (contiguous, in ``dtype``) and the provenance of its linear weights."""
    out: dict[str, torch.Tensor] = {}
    prov: dict[str, list[Segment]] = {}
    for local_i, global_i in enumerate(mapping.layers(rank, len(conv.layers))):
        t, p = shard_layer(conv, mapping, rank, global_i, local_i, dtype)
        out.update(t)
        prov.update(p)
    out.update(shard_ends(conv, mapping, rank, dtype))
    return out, prov


# ------------------------------------------------------------------------------------ reassembly


def kind_of(name: str) -> str:
    """How a unified-checkpoint tensor is split across tp ranks: qkv, col, row or rep (replicated)."""
    if name == "lm_head.weight":
        return "col"
    if ".attention.qkv." in name:
        return "qkv"
    if name.endswith((".mlp.fc.weight", ".mlp.fc.bias", ".mlp.gate.weight", ".mlp.gate.bias")):
        return "col"
    if name.endswith((".attention.dense.weight", ".mlp.proj.weight")):
        return "row"
    return "rep"


def unshard_qkv(pieces: list[torch.Tensor], num_heads: int, num_kv_heads: int, head_size: int) -> torch.Tensor:
    """Inverse of the QKV split: per-rank ``[q_r; k_r; v_r]`` back to ``[q; k; v]`` without duplicated KV heads."""
    tp = len(pieces)
    nq = num_heads // tp * head_size
    nk = kv_heads_per_rank(num_kv_heads, tp) * head_size
    qs, ks, vs = [], [], []
    for p in pieces:
        q, k, v = p.split([nq, nk, nk], 0)
        qs.append(q)
        ks.append(k)
        vs.append(v)
    step = tp // num_kv_heads if num_kv_heads < tp else 1
    return torch.cat(qs + ks[::step] + vs[::step], 0)
