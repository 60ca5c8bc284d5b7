"""What a benchmark ran on: CPU/GPU, driver, CUDA, library versions, git commit, command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

import sparse_trt

from .memory import Nvml
from .results import Environment

_PACKAGES = ("torch", "transformers", "tensorrt_llm", "tensorrt", "tritonclient", "onnx", "onnxruntime",
             "nvidia-ml-py", "matplotlib", "numpy")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    root = Path(sparse_trt.__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    commit = r.stdout.strip()
    try:
        d = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
        if d.returncode == 0 and d.stdout.strip():
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return commit


def capture(device: torch.device | None, argv: list[str] | None = None) -> Environment:
    gpu_name = None
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    idx = device.index or 0 if device is not None and device.type == "cuda" else (0 if gpu_count else None)
    if gpu_count and idx is not None:
        gpu_name = torch.cuda.get_device_name(idx)
    nv = Nvml(idx)
    versions = {p: _version(p) for p in _PACKAGES}
    versions["sparse_trt"] = sparse_trt.__version__
    return Environment(
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        cpu=cpu_name(),
        cpu_count=os.cpu_count() or 0,
        gpu_name=gpu_name,
        gpu_count=gpu_count,
        gpu_driver=nv.driver_version(),
        cuda=torch.version.cuda,
        nvml=nv.status,
        versions=versions,
        git_commit=git_commit(),
        command_line=list(sys.argv if argv is None else argv),
    )
