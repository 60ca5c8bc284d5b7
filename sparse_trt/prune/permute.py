"""Input-channel permutation for N:M: move important weights into different groups of M.

A permutation of a linear's input channels is absorbed *exactly* only where the producer of
those channels can be permuted the same way. Inside a LLaMA-style decoder layer that is:

* ``mlp.down_proj`` input = ``act(gate_proj x) * up_proj x``: permute the rows of gate_proj and
  up_proj (elementwise product, so any permutation of the intermediate channels is exact);
* ``self_attn.o_proj`` input = per-head ``softmax(QK^T) V``: permute V's channels *within* each
  head (rotary embeddings never touch V), with one permutation per KV head shared by all query
  heads of its GQA group, applied to v_proj's rows and to o_proj's columns of each such head.

The hidden size (q/k/v, gate/up inputs) is never permuted: it is the residual stream, read and
written by norms and embeddings outside the layer. Families with a norm on V (or without this
layout) are left alone.

Choosing the permutation: channels are dealt into groups in a snake order of descending total
importance (so every group gets a mix of strong and weak channels), then bounded greedy pair
swaps between groups improve the importance kept by the N:M mask. Kept only if it beats the
identity. Deterministic (seeded trials, stable sorts).
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import nm_keep_mask


def kept_score(scores: torch.Tensor, n: int, m: int) -> float:
    return float((scores * nm_keep_mask(scores, n, m)).sum())


def _group_kept(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Kept importance of each group: [groups]."""
    rows, cols = scores.shape
    top = scores.reshape(rows, cols // m, m).topk(n, dim=-1).values
    return top.sum(dim=(0, 2))


def nm_permutation(scores: torch.Tensor, n: int, m: int, trials: int = 256, seed: int = 0) -> torch.Tensor | None:
    """A column order ``perm`` (new column p = old column perm[p]) keeping more importance, or None."""
    s = scores.detach().float()
    cols = s.shape[1]
    groups = cols // m
    if groups < 2:
        return None
    base = kept_score(s, n, m)
    order = torch.sort(-s.sum(dim=0), stable=True).indices
    slots = torch.empty(cols, dtype=torch.long)
    g_idx = torch.arange(cols) % (2 * groups)
    g_idx = torch.where(g_idx < groups, g_idx, 2 * groups - 1 - g_idx)  # snake: 0..G-1, G-1..0, ...
    pos_in = torch.arange(cols) // groups
    slots[:] = g_idx * m + pos_in
    perm = torch.empty(cols, dtype=torch.long)
    perm[slots] = order
    cur = s[:, perm]
    gk = _group_kept(cur, n, m)
    gen = torch.Generator().manual_seed(seed)
    batch = 64
    for _ in range(max(0, trials) // batch):
        a = torch.randint(cols, (batch,), generator=gen)
        b = torch.randint(cols, (batch,), generator=gen)
        for i, j in zip(a.tolist(), b.tolist(), strict=True):
            ga, gb = i // m, j // m
            if ga == gb:
                continue
            blk_a = cur[:, ga * m : (ga + 1) * m].clone()
            blk_b = cur[:, gb * m : (gb + 1) * m].clone()
            ia, jb = i - ga * m, j - gb * m
            blk_a[:, ia], blk_b[:, jb] = cur[:, j], cur[:, i]
            new_a = float(blk_a.topk(n, dim=-1).values.sum())
            new_b = float(blk_b.topk(n, dim=-1).values.sum())
            if new_a + new_b > float(gk[ga] + gk[gb]) * (1 + 1e-7):
                cur[:, [i, j]] = cur[:, [j, i]]
                perm[[i, j]] = perm[[j, i]]
                gk[ga], gk[gb] = new_a, new_b
    return perm if kept_score(s[:, perm], n, m) > base * (1 + 1e-7) else None


def _rows(lin: nn.Linear, perm: torch.Tensor) -> None:
    with torch.no_grad():
        lin.weight.copy_(lin.weight[perm.to(lin.weight.device)])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[perm.to(lin.bias.device)])


def _cols(lin: nn.Linear, perm: torch.Tensor) -> None:
    with torch.no_grad():
        lin.weight.copy_(lin.weight[:, perm.to(lin.weight.device)])


def permutable_consumers(layer: nn.Module) -> dict[str, str]:
    """Which consumer linears of this layer can take an exact input permutation: {consumer attr path: kind}."""
    out: dict[str, str] = {}
    mlp = getattr(layer, "mlp", None)
    if mlp is not None and all(isinstance(getattr(mlp, a, None), nn.Linear) for a in ("gate_proj", "up_proj", "down_proj")):
        out["mlp.down_proj"] = "mlp"
    attn = getattr(layer, "self_attn", None)
    if (
        attn is not None
        and isinstance(getattr(attn, "v_proj", None), nn.Linear)
        and isinstance(getattr(attn, "o_proj", None), nn.Linear)
        and not hasattr(attn, "v_norm")
        and _head_layout(layer) is not None
    ):
        out["self_attn.o_proj"] = "attn"
    return out


def _head_layout(layer: nn.Module) -> tuple[int, int, int] | None:
    """(num query heads, num kv heads, head dim) from the attention module and its config."""
    attn = layer.self_attn
    cfg = getattr(attn, "config", None)
    hd = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if not (hd and heads and kv) or attn.o_proj.in_features != heads * hd or attn.v_proj.out_features != kv * hd:
        return None
    return int(heads), int(kv), int(hd)


def expand_head_perm(per_kv: list[torch.Tensor], heads: int, kv: int, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v_proj row order and o_proj column order from one within-head permutation per KV head."""
    v_perm = torch.cat([g * hd + p for g, p in enumerate(per_kv)])
    q_per_kv = heads // kv
    o_perm = torch.cat([h * hd + per_kv[h // q_per_kv] for h in range(heads)])
    return v_perm, o_perm


def apply_mlp_perm(layer: nn.Module, perm: torch.Tensor) -> None:
    _rows(layer.mlp.gate_proj, perm)
    _rows(layer.mlp.up_proj, perm)
    _cols(layer.mlp.down_proj, perm)


def apply_attn_perm(layer: nn.Module, per_kv: list[torch.Tensor]) -> torch.Tensor:
    """Permute v_proj rows / o_proj columns; return the o_proj input permutation."""
    heads, kv, hd = _head_layout(layer)
    v_perm, o_perm = expand_head_perm(per_kv, heads, kv, hd)
    _rows(layer.self_attn.v_proj, v_perm)
    _cols(layer.self_attn.o_proj, o_perm)
    return o_perm


def choose_and_apply(layer: nn.Module, kind: str, scores: torch.Tensor, n: int, m: int, trials: int, seed: int) -> torch.Tensor | None:
    """Pick a permutation of the consumer's inputs from its importance ``scores [out, in]``, apply it to
    producer and consumer, and return the consumer's input permutation (None: identity kept)."""
    if kind == "mlp":
        perm = nm_permutation(scores, n, m, trials, seed)
        if perm is not None:
            apply_mlp_perm(layer, perm)
        return perm
    heads, kv, hd = _head_layout(layer)
    if hd % m:
        return None
    q_per_kv = heads // kv
    per_kv, changed = [], False
    for g in range(kv):
        blocks = [scores[:, h * hd : (h + 1) * hd] for h in range(g * q_per_kv, (g + 1) * q_per_kv)]
        p = nm_permutation(torch.cat(blocks, dim=0), n, m, trials, seed + g)
        changed |= p is not None
        per_kv.append(p if p is not None else torch.arange(hd))
    return apply_attn_perm(layer, per_kv) if changed else None
