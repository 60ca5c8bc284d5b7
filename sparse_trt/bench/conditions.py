"""How busy the machine was while a point was measured: load average, CPU use and steal, GPU clocks.

A number measured on a busy or throttled machine is not the same number as on an idle one. Each
measured point records a snapshot at its start and end (load average; GPU SM/memory clocks and
temperature via NVML where it works) and the whole machine's CPU busy and steal shares in between
(from ``/proc/stat``; steal is time the hypervisor gave our virtual CPUs to another guest).
Anything unreadable is recorded as a note, never an error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from sparse_trt.core.deps import available, require

from .results import Conditions, HostSnapshot


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def _cpu_times() -> list[int] | None:
    """Aggregate 'cpu' line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    try:
        return [int(x) for x in first[1:]]
    except ValueError:
        return None


def _gpu(device_index: int | None) -> dict[str, float]:
    if device_index is None or not available("pynvml"):
        return {}
    nv = require("pynvml", "GPU clocks and temperature")
    out: dict[str, float] = {}
    try:
        nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(device_index)
        out["sm_clock_mhz"] = float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        out["mem_clock_mhz"] = float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
        out["temperature_c"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
    except Exception:  # noqa: BLE001 - NVMLError subclasses, or no driver
        return out
    return out


@dataclass
class ConditionsProbe:
    """``start()`` before a point, ``stop()`` after it: the point's :class:`Conditions`."""

    gpu_index: int | None = None
    _start: HostSnapshot | None = None
    _cpu: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def snapshot(self) -> HostSnapshot:
        return HostSnapshot(time.time(), _loadavg(), _gpu(self.gpu_index))

    def start(self) -> None:
        self._start = self.snapshot()
        self._cpu = _cpu_times()

    def stop(self) -> Conditions:
        end = self.snapshot()
        start = self._start or end
        cpu_end = _cpu_times()
        busy = steal = None
        notes = list(self.notes)
        if self._cpu is not None and cpu_end is not None and len(cpu_end) == len(self._cpu):
            d = [b - a for a, b in zip(self._cpu, cpu_end, strict=True)]
            total = sum(d[:8]) if len(d) >= 8 else sum(d)  # guest time is already inside user/nice
            if total > 0:
                idle = d[3] + (d[4] if len(d) > 4 else 0)
                steal = 100.0 * d[7] / total if len(d) > 7 else None
                busy = 100.0 * (total - idle) / total
        else:
            notes.append("CPU use and steal unavailable (no /proc/stat)")
        if not start.loadavg:
            notes.append("load average unavailable")
        return Conditions(start, end, os.cpu_count() or 0, busy, steal, notes)


def merge_conditions(items: list[Conditions]) -> Conditions:
    """One record for several windows: the first start, the last end, CPU shares weighted equally."""
    if len(items) == 1:
        return items[0]
    busy = [c.cpu_busy_pct for c in items if c.cpu_busy_pct is not None]
    steal = [c.cpu_steal_pct for c in items if c.cpu_steal_pct is not None]
    notes: list[str] = []
    for c in items:
        notes += [n for n in c.notes if n not in notes]
    return Conditions(items[0].start, items[-1].end, items[0].cpu_count,
                      sum(busy) / len(busy) if busy else None, sum(steal) / len(steal) if steal else None, notes)


def describe(c: Conditions) -> str:
    """One line for tables and reports, e.g. 'load 1.9→2.3 (2 CPUs), busy 97%, steal 0.4%'."""
    parts = []
    if c.start.loadavg and c.end.loadavg:
        parts.append(f"load {c.start.loadavg[0]:.2f}→{c.end.loadavg[0]:.2f} ({c.cpu_count} CPUs)")
    if c.cpu_busy_pct is not None:
        parts.append(f"CPU busy {c.cpu_busy_pct:.0f}%")
    if c.cpu_steal_pct is not None:
        parts.append(f"steal {c.cpu_steal_pct:.1f}%")
    g0, g1 = c.start.gpu, c.end.gpu
    if g0 and g1:
        if "sm_clock_mhz" in g0 and "sm_clock_mhz" in g1:
            parts.append(f"SM clock {g0['sm_clock_mhz']:.0f}→{g1['sm_clock_mhz']:.0f} MHz")
        if "temperature_c" in g0 and "temperature_c" in g1:
            parts.append(f"GPU {g0['temperature_c']:.0f}→{g1['temperature_c']:.0f} °C")
    return ", ".join(parts) or "unknown"
