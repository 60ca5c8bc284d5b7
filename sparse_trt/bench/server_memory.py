"""The memory of a server the benchmark talks to (``triton`` backend), sampled while a point runs.

Two sources, both labelled "server":

* the server's Prometheus endpoint (``--opt metrics_url=http://HOST:8002/metrics``): the sum of
  ``nv_gpu_memory_used_bytes`` over its GPUs (device-wide, as the server reports it);
* a local server's processes: the RSS of the process listening on the gRPC port plus all its
  descendants (Triton's Python-backend models run in child stub processes), found through
  ``/proc`` when the URL is a loopback address, or given with ``--opt server_pid=PID``.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

from .results import ServerMemory

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_GPU_USED = re.compile(r"^nv_gpu_memory_used_bytes(\{[^}]*\})?\s+([0-9.eE+-]+)\s*$")


def listening_pid(port: int) -> int | None:
    """PID of a process (readable by us) with a listening TCP socket on ``port`` (the serving stage's /proc lookup)."""
    from sparse_trt.serve.triton.server import port_holder

    return port_holder(port)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree_rss(pid: int) -> tuple[int | None, int]:
    """(RSS bytes of ``pid`` and all its descendants, number of processes) or (None, 0) if it is gone."""
    kids = _children()
    todo, seen, total = [pid], 0, 0
    found = False
    while todo:
        p = todo.pop()
        try:
            for ln in Path(f"/proc/{p}/status").read_text().splitlines():
                if ln.startswith("VmRSS:"):
                    total += int(ln.split()[1]) * 1024
                    found = True
                    break
        except OSError:
            continue
        seen += 1
        todo += kids.get(p, [])
    return (total if found else None), seen


def metrics_gpu_used(url: str, timeout_s: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - the user's server
            text = r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    vals = [float(m.group(2)) for m in map(_GPU_USED.match, text.splitlines()) if m]
    return int(sum(vals)) if vals else None


class ServerMemoryProbe:
    """Samples the server's memory every ``interval_s`` between ``start()`` and ``stop()``."""

    def __init__(self, *, pid: int | None = None, metrics_url: str | None = None, interval_s: float = 0.25,
                 notes: list[str] | None = None) -> None:
        self.pid = pid
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.notes = list(notes or [])
        self._peak_rss: int | None = None
        self._peak_gpu: int | None = None
        self._procs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_url(cls, grpc_url: str, options: dict[str, str]) -> ServerMemoryProbe | None:
        notes = []
        pid = int(options["server_pid"]) if "server_pid" in options else None
        host, _, port = grpc_url.rpartition(":")
        if pid is None and host in LOOPBACK and port.isdigit():
            pid = listening_pid(int(port))
            if pid is None:
                notes.append(f"no process of ours listens on port {port}: server RSS not measured")
        elif pid is None:
            notes.append("remote server: process RSS not measurable (pass --opt metrics_url=... for GPU memory)")
        metrics = options.get("metrics_url")
        if pid is None and metrics is None:
            return None if not notes else cls(notes=notes)
        return cls(pid=pid, metrics_url=metrics, notes=notes)

    def _sample(self) -> None:
        if self.pid is not None:
            rss, n = tree_rss(self.pid)
            if rss is not None:
                self._peak_rss = rss if self._peak_rss is None else max(self._peak_rss, rss)
                self._procs = max(self._procs, n)
        if self.metrics_url:
            g = metrics_gpu_used(self.metrics_url)
            if g is not None:
                self._peak_gpu = g if self._peak_gpu is None else max(self._peak_gpu, g)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._peak_rss = self._peak_gpu = None
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="sparse-trt-server-mem", daemon=True)
        self._thread.start()

    def stop(self) -> ServerMemory | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self.pid is None and not self.metrics_url:
            return ServerMemory("not measured", None, notes=self.notes)
        if self._peak_gpu is not None:
            src = f"server /metrics nv_gpu_memory_used_bytes ({self.metrics_url})"
            notes = self.notes + ([f"local server process tree RSS peak {self._peak_rss} bytes (pid {self.pid})"]
                                  if self._peak_rss is not None else [])
            return ServerMemory(src, self._peak_gpu, notes=notes)
        if self._peak_rss is not None:
            return ServerMemory(f"local server process tree RSS (pid {self.pid}, {self._procs} processes)",
                                self._peak_rss, notes=self.notes)
        return ServerMemory("not measured", None, notes=self.notes + ["the server's memory could not be read"])
