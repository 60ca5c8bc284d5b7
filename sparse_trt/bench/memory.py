"""Memory probes: NVML (device-wide and this process), torch allocator peaks, host RSS, weight bytes.

Missing NVML (no ``nvidia-ml-py``, no driver, no GPU) is recorded as a reason string, never a crash.
Per-process NVML readings are *unknown* (None), never 0, when NVML cannot see this process: inside a
container's PID namespace NVML lists host PIDs (or none), and some drivers report no per-process usage.
Runtimes that allocate outside torch (TensorRT-LLM) make torch's allocator peaks meaningless: probe them
with ``torch_allocator=False`` and describe their memory with :class:`ConfiguredMemory` instead.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from sparse_trt.core.deps import require
from sparse_trt.core.errors import MissingDependencyError

from .results import MemoryStats

log = logging.getLogger(__name__)


class Nvml:
    """A thin NVML handle for one GPU; ``status`` is "ok" or why readings are unavailable."""

    def __init__(self, device_index: int | None) -> None:
        self.status = "ok"
        self._nv = None
        self._handle = None
        if device_index is None:
            self.status = "unavailable: not a CUDA device"
            return
        try:
            nv = require("pynvml")
        except MissingDependencyError as e:
            self.status = f"unavailable: {e.message} (fix: {e.fix})"
            return
        try:
            nv.nvmlInit()
            self._handle = nv.nvmlDeviceGetHandleByIndex(_physical_index(device_index))
            self._nv = nv
        except Exception as e:  # noqa: BLE001 - pynvml raises NVMLError subclasses, or OSError without a driver
            self.status = f"unavailable: NVML could not be initialised ({e})"

    @property
    def ok(self) -> bool:
        return self._nv is not None

    def device_used(self) -> int | None:
        if not self.ok:
            return None
        try:
            return int(self._nv.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:  # noqa: BLE001
            return None

    def process_used(self, pid: int | None = None) -> int | None:
        """Bytes this process uses on the device; None when NVML cannot tell (not listed, or no figure)."""
        if not self.ok:
            return None
        pid = os.getpid() if pid is None else pid
        try:
            procs = self._nv.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:  # noqa: BLE001
            return None
        for p in procs:
            if int(p.pid) == pid:
                used = getattr(p, "usedGpuMemory", None)
                # NVML reports "not available" as None in pynvml; 0 for a process holding a CUDA context is not real
                return int(used) if used else None
        return None  # not listed: another PID namespace (containers), or no context yet

    def driver_version(self) -> str | None:
        if not self.ok:
            return None
        try:
            v = self._nv.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        except Exception:  # noqa: BLE001
            return None


def _physical_index(i: int) -> int:
    """Map a torch device index through CUDA_VISIBLE_DEVICES to NVML's numbering (numeric lists only)."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in vis.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts) and i < len(parts):
        return int(parts[i])
    return i


def nvml_status(device: torch.device | None) -> str:
    return Nvml(device.index or 0 if device is not None and device.type == "cuda" else None).status


def rss_bytes() -> tuple[int | None, int | None]:
    """(current RSS, peak RSS since start or last reset) of this process, from /proc/self/status."""
    cur = peak = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    if peak is None:
        try:
            import resource

            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        except Exception:  # noqa: BLE001
            peak = None
    return cur, peak


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs). False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor's data occupies; for semi-structured sparse tensors, its packed values + metadata."""
    parts = [getattr(t, a, None) for a in ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")]
    parts = [p for p in parts if isinstance(p, torch.Tensor)]
    if parts:
        return sum(int(p.numel()) * p.element_size() for p in parts)
    return int(t.numel()) * t.element_size()


def weights_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (each storage counted once, so tied weights count once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        data = t.data if isinstance(t, nn.Parameter) else t
        key = id(data) if hasattr(data, "packed") else data.untyped_storage().data_ptr() if data.numel() else id(data)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(data)
    return total


@dataclass
class _Window:
    torch_baseline: int | None = None
    nvml_dev_peak: int | None = None
    nvml_proc_peak: int | None = None
    rss_peak: int | None = None
    rss_reset: bool = False
    samples: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConfiguredMemory:
    """Device memory a runtime reserves by configuration rather than through torch (TensorRT-LLM: the engine
    plus its KV-cache pool), as labelled notes for the results."""

    engine_bytes: int
    kv_cache_bytes: int | None
    kv_cache_tokens: int | None = None

    @property
    def total_bytes(self) -> int | None:
        return None if self.kv_cache_bytes is None else self.engine_bytes + self.kv_cache_bytes

    def notes(self) -> list[str]:
        kv = "unknown" if self.kv_cache_bytes is None else f"{self.kv_cache_bytes} B"
        tok = f" ({self.kv_cache_tokens} tokens)" if self.kv_cache_tokens is not None else ""
        total = "unknown" if self.total_bytes is None else f"{self.total_bytes} B"
        return [f"configured device memory: engine {self.engine_bytes} B + KV cache {kv}{tok} = {total}"]


class MemoryProbe:
    """Measures peaks over a window of work on ``device``: call ``start()`` / ``stop()`` around it.

    NVML is sampled by a background thread every ``interval_s`` (and at start/stop), only when NVML
    is available: the thread competes for the GIL and CPU with the work being measured. Host peak RSS
    comes from the kernel's own high-water mark (reset at start where Linux allows), torch peaks from
    the caching allocator's counters.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.02, *, torch_allocator: bool = True,
                 configured: ConfiguredMemory | None = None) -> None:
        self.device = device
        self.interval_s = interval_s
        self.torch_allocator = torch_allocator  # False: the work allocates outside torch; its peaks are not reported
        self.configured = configured
        self.nvml = Nvml(device.index or 0 if device.type == "cuda" else None)
        self._w: _Window | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        w = self._w
        if w is None:
            return
        w.samples += 1
        d = self.nvml.device_used()
        if d is not None:
            w.nvml_dev_peak = max(w.nvml_dev_peak or 0, d)
        p = self.nvml.process_used()
        if p is not None:
            w.nvml_proc_peak = max(w.nvml_proc_peak or 0, p)
        cur, _peak = rss_bytes()
        if cur is not None:
            w.rss_peak = max(w.rss_peak or 0, cur)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._w = _Window()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._w.torch_baseline = int(torch.cuda.memory_allocated(self.device))
        self._w.rss_reset = reset_peak_rss()
        self._sample()
        self._stop.clear()
        self._thread = None
        if self.nvml.ok:
            self._thread = threading.Thread(target=self._loop, name="sparse-trt-memprobe", daemon=True)
            self._thread.start()
        elif not self._w.rss_reset:
            self._w.notes.append("peak RSS could not be reset: host peak is the larger of start/stop samples")

    def stop(self, weights: int | None) -> MemoryStats:
        if self._w is None:
            raise RuntimeError("MemoryProbe.stop() without start()")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        w = self._w
        self._sample()
        torch_peak = over = None
        notes = list(w.notes)
        if self.device.type == "cuda" and self.torch_allocator:
            torch.cuda.synchronize(self.device)
            torch_peak = int(torch.cuda.max_memory_allocated(self.device))
            over = torch_peak - (w.torch_baseline or 0)
        elif self.device.type == "cuda":
            notes.append("torch allocator peaks not reported: the runtime allocates device memory outside torch")
        if self.configured is not None:
            notes += self.configured.notes()
        if not self.nvml.ok:
            notes.append(f"NVML {self.nvml.status}")
        elif w.nvml_proc_peak is None:
            notes.append("NVML per-process memory unknown: this process is not visible to NVML (e.g. a container's "
                         "PID namespace) or the driver gives no per-process figure")
        if self.device.type != "cuda":
            notes.append("CPU run: no device memory; host RSS only")
        _cur, hwm = rss_bytes()
        rss = w.rss_peak
        if w.rss_reset and hwm is not None:
            rss = max(rss or 0, hwm)
        self._w = None
        return MemoryStats(
            weights_bytes=weights,
            torch_peak_allocated_bytes=torch_peak,
            torch_peak_over_baseline_bytes=over,
            nvml_device_used_peak_bytes=w.nvml_dev_peak,
            nvml_process_used_peak_bytes=w.nvml_proc_peak,
            host_peak_rss_bytes=rss,
            notes=notes,
        )


def merge_memory(stats: list[MemoryStats]) -> MemoryStats:
    """Max of each field over several windows (None stays None only if every window had None)."""
    if not stats:
        return MemoryStats(None, None, None, None, None, None, ["no measured iterations"])

    def mx(attr: str) -> int | None:
        vals = [getattr(s, attr) for s in stats if getattr(s, attr) is not None]
        return max(vals) if vals else None

    notes: list[str] = []
    for s in stats:
        for n in s.notes:
            if n not in notes:
                notes.append(n)
    return MemoryStats(
        weights_bytes=stats[0].weights_bytes,
        torch_peak_allocated_bytes=mx("torch_peak_allocated_bytes"),
        torch_peak_over_baseline_bytes=mx("torch_peak_over_baseline_bytes"),
        nvml_device_used_peak_bytes=mx("nvml_device_used_peak_bytes"),
        nvml_process_used_peak_bytes=mx("nvml_process_used_peak_bytes"),
        host_peak_rss_bytes=mx("host_peak_rss_bytes"),
        notes=notes,
    )
