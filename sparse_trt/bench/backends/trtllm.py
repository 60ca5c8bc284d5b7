"""``trtllm``: a built TensorRT-LLM engine through its C++ runtime (ModelRunnerCpp), streaming.

Limits come from the engine's config.json and are checked before TensorRT-LLM is imported. The
engine's build_report.json (from ``sparse-trt build``) is copied into the results and decides
whether the run counts as "sparse kernels ran". Options: ``kv_cache_free_gpu_memory_fraction=``,
``manifest=DIR`` (where sparsity.json lives, for quality), ``end_id=`` (default -1: never stop early).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparse_trt.core.deps import require
from sparse_trt.core.errors import DeviceError

from ..errors import BackendError
from ..results import SparseKernels
from ..timing import Clock
from ..workload import Limits
from .base import Backend, GenerationRequest, SequenceTiming
from .engine_info import (
    check_engine_dir,
    engine_config,
    engine_limits,
    engine_vocab,
    manifest_quality,
    read_build_report,
    report_source_dirs,
    sparse_kernels_from_report,
)


class TrtllmBackend(Backend):
    name = "trtllm"
    thread_safe = False  # one runner; its response loop would steal other threads' responses
    model_kind = "TensorRT-LLM engine folder"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.dir = check_engine_dir(spec.model)
        self.cfg = engine_config(self.dir)
        self.report = read_build_report(self.dir)
        self.runner = None

    def limits(self) -> Limits:
        return engine_limits(self.cfg)

    def load(self) -> None:
        if self.spec.device.type != "cuda":
            raise DeviceError(f"TensorRT-LLM engines run on CUDA GPUs; device is '{self.spec.device}'",
                              fix="use --device cuda (or auto on a GPU machine)")
        require("tensorrt_llm", "running TensorRT-LLM engines")
        from tensorrt_llm.runtime import ModelRunnerCpp

        kw: dict[str, Any] = {"rank": 0}
        if "kv_cache_free_gpu_memory_fraction" in self.spec.options:
            kw["kv_cache_free_gpu_memory_fraction"] = float(self.spec.options["kv_cache_free_gpu_memory_fraction"])
        try:
            self.runner = ModelRunnerCpp.from_dir(engine_dir=str(self.dir), **kw)
        except Exception as e:  # noqa: BLE001 - runtime raises RuntimeError/AssertionError with its own text
            raise BackendError(f"TensorRT-LLM could not load engine '{self.dir}': {e}",
                               fix="check the engine was built for this GPU and TensorRT-LLM version") from None

    def vocab_size(self) -> int:
        return engine_vocab(self.cfg) or 1000

    def dtype_name(self) -> str | None:
        dt = self.cfg.get("pretrained_config", {}).get("dtype")
        return dt if isinstance(dt, str) else None

    def generate(self, request: GenerationRequest) -> list[SequenceTiming]:
        if self.runner is None:
            raise RuntimeError("backend not loaded")
        clock = Clock(self.spec.device)
        batch = [torch.tensor(p, dtype=torch.int32) for p in request.prompts]
        in_lens = [len(p) for p in request.prompts]
        end_id = int(self.spec.options.get("end_id", "-1"))
        n = len(batch)
        first: list[float | None] = [None] * n
        counts = [0] * n
        token_times: list[list[float]] = [[] for _ in range(n)]
        ends = [0.0] * n
        start = clock.now()
        stream = self.runner.generate(
            batch_input_ids=batch, max_new_tokens=request.max_new_tokens, end_id=end_id, pad_id=0,
            streaming=True, return_dict=True, output_sequence_lengths=True,
        )
        for out in stream:
            t = clock.now()
            lens = out["sequence_lengths"]
            for i in range(n):
                produced = int(lens[i][0]) - in_lens[i]
                if produced > counts[i]:
                    if first[i] is None:
                        first[i] = t
                    token_times[i].extend([t] * (produced - counts[i]))
                    counts[i] = produced
                    ends[i] = t
        return [
            SequenceTiming(start, first[i] if first[i] is not None else ends[i] or start, ends[i] or start,
                           in_lens[i], counts[i], token_times[i])
            for i in range(n)
        ]

    def sparse_kernels(self) -> SparseKernels:
        return sparse_kernels_from_report(self.report, str(self.dir))

    def build_report(self) -> dict[str, Any] | None:
        return self.report

    def quality(self):
        extra = [Path(self.spec.options["manifest"])] if "manifest" in self.spec.options else []
        return manifest_quality(*extra, self.dir, *report_source_dirs(self.report))

    def weights_bytes(self) -> int | None:
        total = sum(f.stat().st_size for f in self.dir.glob("*.engine"))
        return total or None  # engine file size: weights plus kernels/tactics metadata (an upper bound)

    def info(self) -> dict[str, Any]:
        bc = self.cfg.get("build_config", {})
        plugin = bc.get("plugin_config", {}) if isinstance(bc, dict) else {}
        return {
            "engine_dir": str(self.dir),
            "weights_bytes_note": "engine file size (weights + kernel metadata)",
            "gemm_plugin": plugin.get("gemm_plugin") if isinstance(plugin, dict) else None,
            "weight_sparsity": bc.get("weight_sparsity") if isinstance(bc, dict) else None,
        }

    def close(self) -> None:
        self.runner = None  # the executor shuts down when the runner is garbage-collected
