"""Read a TensorRT-LLM unified checkpoint back: validate it, reassemble all ranks, run a reference forward.

The reference forward is a small pure-torch implementation of the TensorRT-LLM models we export
(LLaMA family, GPT-2, OPT, Gemma 3) that reads the *TensorRT-LLM* tensors. Reproducing the HF model's logits
from them proves the names, fusion order, transpositions and splits are right.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open

from sparse_trt.core.jsonio import read_json_object

from .errors import CheckpointError
from .sharding import Mapping, kind_of, kv_heads_per_rank, pad_rows, unshard_qkv

_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")


@dataclass
class Checkpoint:
    directory: Path
    config: dict[str, Any]
    mapping: Mapping
    ranks: list[dict[str, torch.Tensor]]

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])


def _cfg_int(cfg: dict[str, Any], key: str, path: Path) -> int:
    try:
        return int(cfg[key])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"'{path}' has no valid '{key}'", fix="re-export the checkpoint with `sparse-trt export trtllm`") from None


def load_checkpoint(directory: Path | str) -> Checkpoint:
    """Read config.json and every rank file; refuse missing files and config/tensor mismatches."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"'{directory}' has no config.json: not a TensorRT-LLM checkpoint",
                              fix="pass the output folder of `sparse-trt export trtllm`")
    cfg = read_json_object(cfg_path, CheckpointError, fix="re-export the checkpoint")
    if "architecture" not in cfg:
        raise CheckpointError(f"'{cfg_path}' has no 'architecture': not a TensorRT-LLM checkpoint config",
                              fix="re-export the checkpoint with `sparse-trt export trtllm`")
    m = cfg.get("mapping") or {}
    tp, pp = int(m.get("tp_size", 1)), int(m.get("pp_size", 1))
    world = int(m.get("world_size", tp * pp))
    if world != tp * pp or tp < 1 or pp < 1:
        raise CheckpointError(f"'{cfg_path}': mapping world_size={world} does not equal tp_size={tp} x pp_size={pp}",
                              fix="re-export the checkpoint; do not edit its config.json by hand")
    mapping = Mapping(tp, pp)
    ranks = []
    for r in range(world):
        f = directory / f"rank{r}.safetensors"
        if not f.is_file():
            raise CheckpointError(f"'{directory}' is missing rank{r}.safetensors (config.json says world_size={world})",
                                  fix="copy the complete checkpoint folder, or re-export it")
        try:
            with safe_open(str(f), "pt") as h:
                ranks.append({k: h.get_tensor(k) for k in h.keys()})
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"'{f}' is unreadable ({e})", fix="re-export the checkpoint") from None
    ckpt = Checkpoint(directory, cfg, mapping, ranks)
    _check_shapes(ckpt, cfg_path)
    return ckpt


def _check_shapes(ckpt: Checkpoint, cfg_path: Path) -> None:
    cfg, mp = ckpt.config, ckpt.mapping
    nh = _cfg_int(cfg, "num_attention_heads", cfg_path)
    nkv = int(cfg.get("num_key_value_heads") or nh)
    hidden = _cfg_int(cfg, "hidden_size", cfg_path)
    hd = int(cfg.get("head_size") or hidden // nh)
    vocab = _cfg_int(cfg, "vocab_size", cfg_path)
    n_layers = _cfg_int(cfg, "num_hidden_layers", cfg_path)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    tp = mp.tp
    if nh % tp or (nkv % tp and tp % nkv):
        raise CheckpointError(f"'{cfg_path}': tp_size={tp} cannot split {nh} heads / {nkv} KV heads",
                              fix="re-export the checkpoint with a valid --tp")
    expected = {
        "attention.qkv.weight": ((nh // tp + 2 * kv_heads_per_rank(nkv, tp)) * hd, hidden),
        "attention.dense.weight": (hidden, nh * hd // tp),
        "mlp.fc.weight": (inter // tp, hidden),
        "mlp.gate.weight": (inter // tp, hidden),
        "mlp.proj.weight": (hidden, inter // tp),
    }
    for r, tensors in enumerate(ckpt.ranks):
        layers = mp.layers(r, n_layers)
        seen = set()
        for name, t in tensors.items():
            m = _LAYER_RE.match(name)
            if m:
                i, local = int(m.group(1)), m.group(2)
                seen.add(i)
                if i >= len(layers):
                    raise CheckpointError(f"rank{r}.safetensors holds '{name}' but config.json gives that rank {len(layers)} layers",
                                          fix="the rank files and config.json come from different exports; re-export")
                want = expected.get(local)
                if want is not None and tuple(t.shape) != want:
                    raise CheckpointError(
                        f"rank{r}.safetensors: '{name}' has shape {tuple(t.shape)} but config.json implies {want}",
                        fix="the rank files and config.json come from different exports; re-export the checkpoint")
            elif name == "lm_head.weight" and tuple(t.shape) != (pad_rows(vocab, tp) // tp, hidden):
                raise CheckpointError(f"rank{r}.safetensors: lm_head.weight has shape {tuple(t.shape)}, "
                                      f"config.json implies ({pad_rows(vocab, tp) // tp}, {hidden})", fix="re-export the checkpoint")
            elif name == "transformer.vocab_embedding.weight" and tuple(t.shape) != _embedding_shape(cfg, tp):
                raise CheckpointError(f"rank{r}.safetensors: vocab embedding has shape {tuple(t.shape)}, config.json "
                                      f"implies {_embedding_shape(cfg, tp)}", fix="re-export the checkpoint")
        if seen != set(range(len(layers))):
            raise CheckpointError(f"rank{r}.safetensors holds layers {sorted(seen)} but config.json gives it {len(layers)}",
                                  fix="re-export the checkpoint")


def _parallel_embedding(cfg: dict[str, Any], tp: int) -> bool:
    """Is the vocab embedding split over tp ranks on dim 0 (``use_parallel_embedding``)?"""
    return tp > 1 and bool(cfg.get("use_parallel_embedding")) and int(cfg.get("embedding_sharding_dim", 0)) == 0


def _embedding_shape(cfg: dict[str, Any], tp: int) -> tuple[int, int]:
    vocab, hidden = int(cfg["vocab_size"]), int(cfg["hidden_size"])
    return (pad_rows(vocab, tp) // tp, hidden) if _parallel_embedding(cfg, tp) else (vocab, hidden)


def assemble(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """All ranks merged into one tensor set with global layer numbers and the vocab padding removed."""
    cfg, mp = ckpt.config, ckpt.mapping
    nh = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    hd = int(cfg.get("head_size") or int(cfg["hidden_size"]) // nh)
    grouped: dict[str, list[torch.Tensor]] = {}
    for r, tensors in enumerate(ckpt.ranks):
        layers = mp.layers(r, ckpt.num_layers)
        for name, t in tensors.items():
            m = _LAYER_RE.match(name)
            gname = f"transformer.layers.{layers[int(m.group(1))]}.{m.group(2)}" if m else name
            grouped.setdefault(gname, [None] * mp.tp)  # type: ignore[list-item]
            grouped[gname][mp.tp_rank(r)] = t
    full: dict[str, torch.Tensor] = {}
    for name, pieces in grouped.items():
        kind = kind_of(name)
        if kind == "qkv":
            full[name] = unshard_qkv(pieces, nh, nkv, hd)
        elif kind == "col":
            full[name] = torch.cat(pieces, 0)
        elif kind == "row":
            full[name] = torch.cat(pieces, 1)
        elif name == "transformer.vocab_embedding.weight" and _parallel_embedding(cfg, mp.tp):
            full[name] = torch.cat(pieces, 0)[: int(cfg["vocab_size"])]
        else:
            full[name] = pieces[0]
    if "lm_head.weight" in full:
        full["lm_head.weight"] = full["lm_head.weight"][: int(cfg["vocab_size"])]
    return full


# ---------------------------------------------------------------------------- reference forward


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name in ("silu", "swish"):
        return F.silu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "openai-gelu"):
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    raise CheckpointError(f"activation '{name}' is not implemented in the reference forward",
                          fix="the reference forward covers silu, gelu, gelu_new and relu")


def _rope(x: torch.Tensor, base: float, dim: int) -> torch.Tensor:
    """GPT-NeoX style rotary embedding over the first ``dim`` channels; x is [T, heads, head_size]."""
    t = x.shape[0]
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    xr, xp = x[..., :dim], x[..., dim:]
    x1, x2 = xr.chunk(2, -1)
    rot = torch.cat([-x2, x1], -1)
    return torch.cat([xr * cos + rot * sin, xp], -1)


def _linear(w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    y = x @ w[prefix + ".weight"].float().t()
    b = w.get(prefix + ".bias")
    return y if b is None else y + b.float()


def _norm(w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, eps: float, rms: bool) -> torch.Tensor:
    g = w[prefix + ".weight"].float()
    if rms:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
    b = w.get(prefix + ".bias")
    return F.layer_norm(x, (x.shape[-1],), g, None if b is None else b.float(), eps)


def _gemma3_logits(cfg: dict[str, Any], w: dict[str, torch.Tensor], ids: torch.Tensor, n_layers: int) -> torch.Tensor:
    """TensorRT-LLM's Gemma 3 (models/gemma/model.py): embedding x sqrt(hidden), norms multiply by their stored
    weight (HF's ``1 + w``), q/k RMSNorm before RoPE, softmax scale 1/sqrt(query_pre_attn_scalar), layer i
    sliding (window ``sliding_window``, base ``rope_local_base_freq``) unless (i + 1) % pattern == 0, norms
    after attention and around the MLP, GELU (tanh) gated MLP, optional final-logit softcapping."""
    if cfg.get("rotary_scaling"):
        raise CheckpointError(f"rotary_scaling {cfg['rotary_scaling']} is not implemented in the reference forward",
                              fix="the reference forward covers plain RoPE only")
    nh = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    hidden = int(cfg["hidden_size"])
    hd = int(cfg["head_size"])
    eps = float(cfg.get("norm_epsilon", 1e-6))
    pattern = int(cfg["_sliding_window_pattern"])
    window = int(cfg["sliding_window"])
    t = ids.shape[0]
    x = w["transformer.vocab_embedding.weight"].float()[ids] * math.sqrt(hidden)
    pos = torch.arange(t)
    causal = pos[None, :] <= pos[:, None]
    local = causal & (pos[:, None] - pos[None, :] < window)
    for i in range(n_layers):
        p = f"transformer.layers.{i}."
        sliding = bool((i + 1) % pattern)
        h = _norm(w, p + "input_layernorm", x, eps, True)
        q, k, v = _linear(w, p + "attention.qkv", h).split([nh * hd, nkv * hd, nkv * hd], -1)
        q = _norm(w, p + "attention.q_layernorm", q.view(t, nh, hd), eps, True)
        k = _norm(w, p + "attention.k_layernorm", k.view(t, nkv, hd), eps, True)
        base = float(cfg["rope_local_base_freq"] if sliding else cfg.get("rotary_base", 10000.0))
        q, k = _rope(q, base, hd), _rope(k, base, hd)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.view(t, nkv, hd).repeat_interleave(nh // nkv, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(float(cfg["query_pre_attn_scalar"]))
        scores = scores.masked_fill(~(local if sliding else causal), float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, nh * hd)
        x = x + _norm(w, p + "post_layernorm", _linear(w, p + "attention.dense", attn), eps, True)
        h = _norm(w, p + "pre_feedforward_layernorm", x, eps, True)
        inter = F.gelu(_linear(w, p + "mlp.fc", h), approximate="tanh") * _linear(w, p + "mlp.gate", h)
        x = x + _norm(w, p + "post_feedforward_layernorm", _linear(w, p + "mlp.proj", inter), eps, True)
    logits = _norm(w, "transformer.ln_f", x, eps, True) @ w["lm_head.weight"].float().t()
    cap = cfg.get("final_logit_softcapping")
    return logits if not cap else torch.tanh(logits / float(cap)) * float(cap)


def reference_logits(ckpt: Checkpoint, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, vocab]`` (float32) for one sequence of token ids, computed from the checkpoint's tensors."""
    cfg = ckpt.config
    w = assemble(ckpt)
    arch = cfg["architecture"]
    if arch == "Gemma3ForCausalLM":
        return _gemma3_logits(cfg, w, input_ids.reshape(-1).long(), ckpt.num_layers)
    nh = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    hidden = int(cfg["hidden_size"])
    hd = int(cfg.get("head_size") or hidden // nh)
    eps = float(cfg.get("norm_epsilon", 1e-5))
    act = cfg.get("hidden_act", "gelu")
    rope = cfg.get("position_embedding_type") == "rope_gpt_neox"
    rms = arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
    if rope and cfg.get("rotary_scaling"):
        raise CheckpointError(f"rotary_scaling {cfg['rotary_scaling']} is not implemented in the reference forward",
                              fix="the reference forward covers plain RoPE only")
    pre_norm = bool(cfg.get("do_layer_norm_before", True))
    ids = input_ids.reshape(-1).long()
    t = ids.shape[0]
    x = w["transformer.vocab_embedding.weight"].float()[ids]
    if "transformer.position_embedding.weight" in w:
        x = x + w["transformer.position_embedding.weight"].float()[:t]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for i in range(ckpt.num_layers):
        p = f"transformer.layers.{i}."
        h = _norm(w, p + "input_layernorm", x, eps, rms) if pre_norm else x
        qkv = _linear(w, p + "attention.qkv", h)
        q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], -1)
        q, k, v = q.view(t, nh, hd), k.view(t, nkv, hd), v.view(t, nkv, hd)
        if rope:
            dim = int(cfg.get("rotary_embedding_dim") or hd)
            base = float(cfg.get("rotary_base", 10000.0))
            q, k = _rope(q, base, dim), _rope(k, base, dim)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, nh * hd)
        x = x + _linear(w, p + "attention.dense", attn)
        if not pre_norm:
            x = _norm(w, p + "input_layernorm", x, eps, rms)
        h = _norm(w, p + "post_layernorm", x, eps, rms) if pre_norm else x
        inter = _act(act, _linear(w, p + "mlp.fc", h))
        if p + "mlp.gate.weight" in w:
            inter = inter * _linear(w, p + "mlp.gate", h)
        x = x + _linear(w, p + "mlp.proj", inter)
        if not pre_norm:
            x = _norm(w, p + "post_layernorm", x, eps, rms)
    if "transformer.ln_f.weight" in w:
        x = _norm(w, "transformer.ln_f", x, eps, rms)
    return x @ w["lm_head.weight"].float().t()
