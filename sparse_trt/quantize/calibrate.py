"""Calibration: run windows through the model and record activation and KV-cache ranges.

The model code is walked, not changed: forward pre-hooks on the target linears record max |x| per
input channel (the per-tensor amax is their max), and a thin attention function registered with
transformers' ``AttentionInterface`` sees the key/value states TensorRT-LLM would write to the KV
cache (after RoPE, before the KV heads are repeated) and delegates to the model's own attention.
The same attention hook lets the simulated-quantization eval quantize the KV cache.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from sparse_trt.models.adapters import Target

from .scales import channel_amax

KVHook = Callable[[str, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
_KV_IMPL = "sparse_trt_kv"
_ACTIVE: dict[int, tuple[str, str, KVHook]] = {}  # id(attention module) -> (name, inner impl, hook)


def _kv_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name, inner, hook = _ACTIVE[id(module)]
    key, value = hook(name, key, value)
    if inner == "eager":
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[inner]
    return fn(module, query, key, value, *args, **kwargs)


def _attention_modules(model: nn.Module, layers: nn.ModuleList, prefix: str) -> dict[str, nn.Module]:
    out = {}
    for i, layer in enumerate(layers):
        for name, mod in layer.named_modules():
            if name and name.split(".")[-1] in ("self_attn", "attn") and hasattr(mod, "config"):
                out[f"{prefix}.{i}.{name}"] = mod
                break
    return out


def _register_mask(inner: str) -> None:
    """Give the hook implementation the attention masks of the one it delegates to: transformers builds no mask
    for an implementation it does not know, which silently drops sliding windows (Gemma 3's local layers)."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # older transformers build masks inside the models
        return
    mapping = getattr(AttentionMaskInterface, "_global_mapping", None) or {}
    if inner in mapping and inner in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(_KV_IMPL, ALL_MASK_ATTENTION_FUNCTIONS[inner])


@contextlib.contextmanager
def kv_hooks(model: nn.Module, layers: nn.ModuleList, prefix: str, hook: KVHook) -> Iterator[list[str]]:
    """Route every decoder layer's attention through ``hook(name, key, value)`` while inside."""
    from transformers import AttentionInterface

    AttentionInterface.register(_KV_IMPL, _kv_attention)
    mods = _attention_modules(model, layers, prefix)
    configs = {id(m.config): m.config for m in mods.values()} | {id(model.config): model.config}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    _register_mask(saved.get(id(model.config)) or "sdpa")
    for name, mod in mods.items():
        _ACTIVE[id(mod)] = (name, saved.get(id(mod.config)) or "sdpa", hook)
    try:
        for c in configs.values():
            c._attn_implementation = _KV_IMPL
        yield list(mods)
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
        for mod in mods.values():
            _ACTIVE.pop(id(mod), None)


@dataclass
class CalibStats:
    channel_amax: dict[str, torch.Tensor] = field(default_factory=dict)  # linear -> [in], input dtype
    k_amax: dict[str, torch.Tensor] = field(default_factory=dict)  # attention -> 0-dim
    v_amax: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0

    def input_amax(self, name: str) -> torch.Tensor:
        return self.channel_amax[name].amax()


def _running_max(store: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    value = value.detach().cpu()
    old = store.get(key)
    store[key] = value if old is None else torch.maximum(old, value)


def calibrate(
    model: nn.Module,
    layers: nn.ModuleList,
    layers_prefix: str,
    targets: list[Target],
    windows: torch.Tensor,
    device: torch.device,
    *,
    kv_cache: bool = False,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> CalibStats:
    """Forward ``windows [n, seqlen]`` and return per-linear input ranges (and K/V ranges)."""
    stats = CalibStats()

    def pre_hook(name: str):
        def fn(_mod: nn.Module, args: tuple) -> None:
            _running_max(stats.channel_amax, name, channel_amax(args[0]))
        return fn

    def kv_record(name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _running_max(stats.k_amax, name, k.detach().abs().amax())
        _running_max(stats.v_amax, name, v.detach().abs().amax())
        return k, v

    handles = [t.module.register_forward_pre_hook(pre_hook(t.name)) for t in targets]
    model.to(device)
    n = windows.shape[0]
    try:
        ctx = kv_hooks(model, layers, layers_prefix, kv_record) if kv_cache else contextlib.nullcontext()
        with ctx, torch.no_grad():
            for start in range(0, n, batch_size):
                ids = windows[start : start + batch_size].to(device)
                model(input_ids=ids, use_cache=False)
                stats.tokens += ids.numel()
                if progress is not None:
                    progress(min(start + batch_size, n), n)
    finally:
        for h in handles:
            h.remove()
    return stats
