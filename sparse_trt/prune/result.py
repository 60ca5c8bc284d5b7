"""The value every pruning algorithm returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PruneResult:
    weight: torch.Tensor  # pruned weight, [out, in], same dtype/device as the input weight
    keep: torch.Tensor  # bool [out, in]; False where the weight was zeroed
    info: dict = field(default_factory=dict)  # algorithm facts for the manifest (damp, retries, ...)
