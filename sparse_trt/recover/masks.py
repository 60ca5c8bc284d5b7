"""Fixed sparsity masks during training: every pruned weight stays exactly zero at every step.

The mask of each pruned linear (a manifest layer with a pattern) is where its weight is non-zero
when training starts. Two guards keep it: gradients at pruned positions are zeroed before the
optimizer step (so AdamW's moments there stay zero), and after each step the pruned positions
are set to zero again (``masked_fill_``: exact, whatever the optimizer, weight decay, dtype or
rounding did). Linears kept dense on purpose (plan / ``--exclude``) have no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_trt.core.errors import ManifestError
from sparse_trt.core.manifest import Manifest


@dataclass
class SparsityMasks:
    """``keep[i]`` is a bool tensor, True where ``params[i]`` may be non-zero."""

    names: list[str]
    params: list[nn.Parameter]
    keep: list[torch.Tensor]

    @classmethod
    def from_manifest(cls, model: nn.Module, manifest: Manifest) -> SparsityMasks:
        modules = dict(model.named_modules())
        names, params, keep = [], [], []
        for rec in manifest.layers:
            if rec.pattern is None:
                continue
            mod = modules.get(rec.name)
            w = getattr(mod, "weight", None)
            if not isinstance(w, nn.Parameter):
                raise ManifestError(
                    f"the manifest names linear '{rec.name}', which the model does not have",
                    fix="the folder's weights and sparsity.json do not belong together; re-run `sparse-trt prune`",
                )
            if tuple(w.shape) != tuple(rec.shape):
                raise ManifestError(
                    f"'{rec.name}' has shape {tuple(w.shape)}, the manifest says {tuple(rec.shape)}",
                    fix="re-run `sparse-trt prune`",
                )
            names.append(rec.name)
            params.append(w)
            keep.append(w.detach() != 0)
        return cls(names, params, keep)

    def to(self, device: torch.device) -> SparsityMasks:
        self.keep = [k.to(device) for k in self.keep]
        return self

    def mask_grads(self) -> None:
        """Zero the gradients at pruned positions (call after backward, before the optimizer step)."""
        for p, k in zip(self.params, self.keep, strict=True):
            if p.grad is not None:
                p.grad.masked_fill_(~k, 0)

    @torch.no_grad()
    def apply(self) -> None:
        """Set every pruned position to exactly zero (call after each optimizer step)."""
        for p, k in zip(self.params, self.keep, strict=True):
            p.masked_fill_(~k, 0)

    @torch.no_grad()
    def violations(self) -> int:
        """Number of pruned positions that are not exactly zero (0 when the masks held)."""
        return sum(int((p[~k] != 0).sum()) for p, k in zip(self.params, self.keep, strict=True))

    def pruned_fraction(self) -> float:
        total = sum(k.numel() for k in self.keep)
        return 1.0 - sum(int(k.sum()) for k in self.keep) / total if total else 0.0


def trainable_parameters(model: nn.Module, layers: nn.ModuleList) -> list[tuple[str, nn.Parameter]]:
    """Every parameter of the decoder layers (kept weights of pruned linears, dense linears, norms,
    biases), with its full name in ``model``.

    Embeddings, the LM head and the final norm stay frozen: they are not pruned, and freezing them
    keeps memory low and tied embeddings unchanged.
    """
    inside = {id(p) for p in layers.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in inside]
