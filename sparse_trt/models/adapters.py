"""One small adapter per model family: where the decoder layers live and what to prune.

Adding an architecture means adding one ``Adapter`` entry to ``ADAPTERS``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sparse_trt.core.errors import UnsupportedModelError


@dataclass(frozen=True)
class Adapter:
    family: str
    model_types: tuple[str, ...]
    layers_path: str  # dotted attribute path of the decoder layers' ModuleList
    needs_bos: bool = False  # evaluation/calibration windows must start with BOS (e.g. Gemma)
    context_attr: tuple[str, ...] = ("max_position_embeddings",)
    # (name prefix in the model, name prefix in its checkpoints) where the two differ
    stored_prefixes: tuple[tuple[str, str], ...] = ()

    def layers(self, model: nn.Module) -> nn.ModuleList:
        obj: object = model
        for part in self.layers_path.split("."):
            obj = getattr(obj, part)
        assert isinstance(obj, nn.ModuleList)
        return obj

    def stored_name(self, name: str) -> str:
        """The name a parameter has in this family's checkpoints (as ``save_pretrained`` writes it)."""
        for model_prefix, stored_prefix in self.stored_prefixes:
            if name.startswith(model_prefix):
                return stored_prefix + name[len(model_prefix) :]
        return name

    def max_context(self, config: object) -> int | None:
        for attr in self.context_attr:
            v = getattr(config, attr, None)
            if isinstance(v, int) and v > 0:
                return v
        return None


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama", "mistral", "qwen2", "qwen3"), "model.layers"),
    Adapter("gemma3", ("gemma3_text", "gemma2", "gemma"), "model.layers", needs_bos=True),
    Adapter("opt", ("opt",), "model.decoder.layers"),
    Adapter("gpt2", ("gpt2",), "transformer.h", context_attr=("n_positions", "max_position_embeddings")),
    Adapter("gpt_neox", ("gpt_neox",), "gpt_neox.layers", stored_prefixes=(("lm_head.", "embed_out."),)),
    Adapter("phi3", ("phi3",), "model.layers"),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str) -> Adapter:
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise UnsupportedModelError(
        f"model_type '{model_type}' is not supported",
        fix=f"supported model types: {', '.join(supported_model_types())}",
    )


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 Conv1D: a linear whose weight is stored as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_target(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


@dataclass(frozen=True)
class Target:
    """A prunable linear: its full module name and which weight dim is the input (reduction) dim."""

    name: str
    module: nn.Module
    in_dim: int

    @property
    def in_features(self) -> int:
        return int(self.module.weight.shape[self.in_dim])

    def weight_out_in(self) -> torch.Tensor:
        """The weight as [out, in] (a view for Conv1D)."""
        w = self.module.weight.data
        return w.t() if self.in_dim == 0 else w

    def set_weight_out_in(self, w: torch.Tensor) -> None:
        dst = self.module.weight.data
        dst.copy_(w.t() if self.in_dim == 0 else w)


def layer_targets(layer: nn.Module, prefix: str, exclude: Iterable[str] = ()) -> list[Target]:
    """Prunable linears of one decoder layer in module order, minus those matching an exclude glob."""
    pats = tuple(exclude)
    out = []
    for name, mod in layer.named_modules():
        if not name or not is_target(mod):
            continue
        full = f"{prefix}.{name}"
        if any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(name, p) for p in pats):
            continue
        out.append(Target(full, mod, 0 if is_conv1d(mod) else 1))
    return out


def all_targets(model: nn.Module, adapter: Adapter, exclude: Iterable[str] = ()) -> list[Target]:
    layers = adapter.layers(model)
    out: list[Target] = []
    for i, layer in enumerate(layers):
        out.extend(layer_targets(layer, f"{adapter.layers_path}.{i}", exclude))
    return out
