"""Where calibration activations live: the compute device, host memory, or a memory-mapped file.

The walker holds a few ``[nsamples, seqlen, hidden]`` tensors at a time: the current layer's inputs
and outputs, and for ``sparsegpt-block`` the dense stream of its fitting windows and their
reference outputs. ``plan_activations`` chooses the first place they fit: the compute device (an
accelerator with room to spare), host memory within ``max_memory`` (pinned when an accelerator
will read it), else files under the output's temporary folder, mapped into memory so the kernel
pages them in and out as the walker reads them.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

PLACES = ("device", "host", "disk")


@dataclass(frozen=True)
class ActivationPlan:
    place: str  # one of PLACES
    device: torch.device  # where "device" tensors go (and where the layer runs)
    folder: Path | None  # "disk": where the mapped files go
    bytes_needed: int  # the walker's activation buffers at their largest

    def record(self) -> dict[str, object]:
        """What the manifest keeps about it."""
        return {"activations": self.place, "activation_bytes": self.bytes_needed}


def activation_bytes(nsamples: int, seqlen: int, hidden: int, elem_bytes: int, fit_windows: int = 0) -> int:
    """Bytes of the buffers the walker holds at once: inputs + outputs (+ the dense stream and its reference)."""
    per_window = seqlen * hidden * elem_bytes
    return per_window * (2 * nsamples + 2 * fit_windows)


def plan_activations(
    bytes_needed: int,
    device: torch.device,
    *,
    device_free: int,
    host_budget: int,
    folder: Path,
) -> ActivationPlan:
    """The first place the activations fit: the accelerator (a quarter of its free memory), host, disk."""
    if device.type != "cpu" and 4 * bytes_needed <= device_free:
        return ActivationPlan("device", device, None, bytes_needed)
    if bytes_needed <= host_budget:
        return ActivationPlan("host", device, None, bytes_needed)
    return ActivationPlan("disk", device, Path(folder), bytes_needed)


class ActivationStore:
    """Allocates the walker's activation buffers where the plan says (``alloc(shape, dtype)``)."""

    def __init__(self, plan: ActivationPlan):
        self.plan = plan
        self._ids = itertools.count()

    def alloc(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        place = self.plan.place
        if place == "device":
            return torch.empty(shape, dtype=dtype, device=self.plan.device)
        if place == "host":
            pin = self.plan.device.type == "cuda"
            return torch.empty(shape, dtype=dtype, pin_memory=pin)
        assert self.plan.folder is not None
        self.plan.folder.mkdir(parents=True, exist_ok=True)
        path = self.plan.folder / f"activations-{os.getpid()}-{next(self._ids)}.bin"
        numel = 1
        for s in shape:
            numel *= int(s)
        t = torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)
        os.unlink(path)  # the mapping keeps the pages; nothing is left behind when the tensor is freed
        return t


def plan_walk_activations(config, nsamples: int, seqlen: int, dtype: torch.dtype, options, device: torch.device,
                          max_memory: int | None, folder: Path) -> ActivationPlan:
    """The activation plan of one prune run (``max_memory``: host bytes allowed; default half the available)."""
    from sparse_trt.core.device import available_memory_bytes

    from .fitlayer import block_fit_settings

    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0)
    fit = block_fit_settings(options)
    fit_windows = min(nsamples, fit.steps * fit.batch) if fit is not None else 0
    elem = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    need = activation_bytes(nsamples, seqlen, hidden, elem, fit_windows)
    host = max_memory if max_memory is not None else available_memory_bytes(torch.device("cpu")) // 2
    free = available_memory_bytes(device) if device.type != "cpu" else 0
    return plan_activations(need, device, device_free=free, host_budget=host, folder=folder)
