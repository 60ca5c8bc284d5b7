"""``trtllm``: a built TensorRT-LLM engine driven through its executor (``tensorrt_llm.bindings.executor``).

Each sequence is one streaming executor request. One background thread calls ``await_responses`` and
hands every response to the queue of the request it belongs to, stamped with the host clock
(``time.perf_counter``) when it arrived; ``generate`` may be called from several threads at once, so
several requests are in flight and TensorRT-LLM's in-flight batching is really exercised. No torch
synchronisation or padding is involved: a token's time is when the executor delivered it.

KV cache: an explicit token budget, the same for both sides of a ``compare`` (by default the engine's
``max_batch_size x max_seq_len`` tokens, enough for any workload its limits accept; engines built with the
same settings get the same budget), passed as ``KvCacheConfig(max_tokens=...)``. Without it the
executor would take 90 % of the *free* memory, so a second engine loaded in the same process would get
what the first left. A budget that does not fit next to the engine in the free GPU memory is refused.

Multi-rank engines (``world_size > 1``) need one MPI process per rank and are refused with how to
benchmark them instead.

Options (``--opt KEY=VALUE``): ``kv_cache_tokens=N``, ``kv_cache_free_gpu_memory_fraction=F`` (an upper
bound on top of the token budget), ``end_id`` (default -1: never stop early), ``pad_id`` (default 0),
``timeout_s`` (per request, default 600), ``manifest=DIR`` (where sparsity.json lives, for quality).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from sparse_trt.core.deps import require
from sparse_trt.core.errors import DeviceError, InputError
from sparse_trt.engine.folder import read_engine_dir

from ..errors import BackendError
from ..memory import ConfiguredMemory
from ..results import SparseKernels
from ..workload import Limits
from .base import Backend, GenerationRequest, SequenceTiming
from .engine_info import (
    BuildReportError,
    KvGeometry,
    engine_limits,
    engine_mapping,
    engine_vocab,
    kv_geometry,
    load_build_report,
    manifest_quality,
    report_source_dirs,
    sparse_kernels_from_report,
)

#: how much of the free GPU memory the engine and the KV budget may take together (the rest: activations,
#: TensorRT workspace, decoder buffers)
FIT_FRACTION = 0.9
_POLL = timedelta(milliseconds=20)


@dataclass(frozen=True)
class TrtllmOptions:
    kv_cache_tokens: int | None = None  # KV-cache budget in tokens (default: the engine's max_batch_size x max_seq_len)
    kv_cache_free_gpu_memory_fraction: float | None = None  # cap on the free GPU memory the KV cache may take
    end_id: int = -1  # -1: never stop early (exact output lengths)
    pad_id: int = 0
    timeout_s: float = 600.0  # per request
    manifest: str | None = None  # sparsity.json folder for quality, when the build report does not name it

    def __post_init__(self) -> None:
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < 1:
            raise ValueError("kv_cache_tokens must be at least 1, e.g. --opt kv_cache_tokens=32768")
        f = self.kv_cache_free_gpu_memory_fraction
        if f is not None and not 0.0 < f <= 1.0:
            raise ValueError(f"kv_cache_free_gpu_memory_fraction={f} is not in (0, 1], e.g. 0.4")
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be > 0")


def free_device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of the CUDA device, from the driver."""
    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total)


class TrtllmBackend(Backend):
    name = "trtllm"
    thread_safe = True  # one response thread dispatches to per-request queues
    model_kind = "TensorRT-LLM engine folder"
    Options = TrtllmOptions
    #: TensorRT-LLM allocates device memory outside torch: torch allocator peaks say nothing about it
    #: (``MemoryProbe(device, torch_allocator=False, configured=backend.configured_memory())``)
    torch_allocator = False

    def __init__(self, spec) -> None:
        super().__init__(spec)
        engine = read_engine_dir(spec.model)
        self.dir, self.cfg = engine.path, engine.config
        self.report = load_build_report(self.dir)
        mapping = engine_mapping(self.cfg)
        if mapping.world_size > 1:
            raise InputError(
                f"engine '{self.dir}' has {mapping.world_size} ranks (tp={mapping.tp}, pp={mapping.pp}); the trtllm "
                "backend runs single-rank engines in this process, and TensorRT-LLM needs one MPI process per rank",
                fix=f"benchmark it through Triton with world size {mapping.world_size} (`sparse-trt triton repo` + "
                f"--backend triton), or with NVIDIA's trtllm-bench under `mpirun -n {mapping.world_size}`",
            )
        self.geometry: KvGeometry | None = kv_geometry(self.cfg)
        opts: TrtllmOptions = self.opts
        self.kv_fraction: float | None = opts.kv_cache_free_gpu_memory_fraction
        tokens = opts.kv_cache_tokens
        lim = engine_limits(self.cfg)
        if tokens is not None:
            self.kv_source = "--opt kv_cache_tokens"
        elif lim.max_batch_size and lim.max_seq_len:
            tokens = lim.max_batch_size * lim.max_seq_len
            self.kv_source = "default: the engine's max_batch_size x max_seq_len"
        else:
            raise InputError(f"engine '{self.dir}' config has no max_batch_size/max_seq_len to size the KV cache from",
                             fix="pass --opt kv_cache_tokens=N (the same N for both sides of a compare)")
        self.kv_tokens: int = self.geometry.round_tokens(tokens) if self.geometry else tokens
        self.end_id, self.pad_id, self.timeout_s = opts.end_id, opts.pad_id, opts.timeout_s
        self.executor: Any = None
        self._tle: Any = None
        self._lock = threading.Lock()
        self._queues: dict[int, queue.Queue] = {}
        self._orphans: dict[int, list] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fatal: str | None = None

    # -- facts -----------------------------------------------------------------------------------------------
    def limits(self) -> Limits:
        return engine_limits(self.cfg)

    def vocab_size(self) -> int:
        return engine_vocab(self.cfg) or 1000

    def dtype_name(self) -> str | None:
        dt = self.cfg.get("pretrained_config", {}).get("dtype")
        return dt if isinstance(dt, str) else None

    def token_counts(self) -> str:
        return "engine: output token ids of each streaming executor response"

    def model_signature(self) -> dict[str, Any] | None:
        pc = self.cfg.get("pretrained_config")
        if not isinstance(pc, dict):
            return None
        keys = ("architecture", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")
        return {k: pc[k] for k in keys if pc.get(k) is not None}

    def engine_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.glob("rank*.engine"))

    def kv_cache_bytes(self) -> int | None:
        return self.geometry.bytes_for(self.kv_tokens) if self.geometry else None

    def configured_memory(self) -> ConfiguredMemory:
        return ConfiguredMemory(self.engine_bytes(), self.kv_cache_bytes(), self.kv_tokens)

    # -- life cycle ------------------------------------------------------------------------------------------
    def check_fit(self, free_bytes: int) -> None:
        """Refuse a KV budget that cannot sit next to the engine in ``free_bytes`` of GPU memory."""
        kv = self.kv_cache_bytes()
        if kv is None:
            return
        need = kv + self.engine_bytes()
        if need > FIT_FRACTION * free_bytes:
            per_token = self.geometry.bytes_per_token if self.geometry else 1
            fits = max(0, int((FIT_FRACTION * free_bytes - self.engine_bytes()) // per_token))
            raise DeviceError(
                f"the KV-cache budget of {self.kv_tokens} tokens ({kv / 2**30:.2f} GiB, {self.kv_source}) plus the engine "
                f"({self.engine_bytes() / 2**30:.2f} GiB) does not fit in {FIT_FRACTION:.0%} of the free GPU memory "
                f"({free_bytes / 2**30:.2f} GiB)",
                fix=f"pass --opt kv_cache_tokens=N with N <= {fits} (the same N for both sides of a compare), or build "
                "the engines with a smaller --max-batch-size / --max-seq-len",
            )

    def load(self) -> None:
        if self.spec.device.type != "cuda":
            raise DeviceError(f"TensorRT-LLM engines run on CUDA GPUs; device is '{self.spec.device}'",
                              fix="use --device cuda (or auto on a GPU machine)")
        tle = require("tensorrt_llm.bindings.executor", "running TensorRT-LLM engines")
        self.check_fit(free_device_memory(self.spec.device)[0])
        kv_kw: dict[str, Any] = {"max_tokens": self.kv_tokens, "enable_block_reuse": False}
        if self.kv_fraction is not None:
            kv_kw["free_gpu_memory_fraction"] = self.kv_fraction
        config = tle.ExecutorConfig(max_beam_width=1, kv_cache_config=tle.KvCacheConfig(**kv_kw))
        try:
            self.executor = tle.Executor(Path(self.dir), tle.ModelType.DECODER_ONLY, config)
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError with its own text
            raise BackendError(f"TensorRT-LLM could not load engine '{self.dir}': {e}",
                               fix="check the engine was built for this GPU and TensorRT-LLM version") from None
        self._tle = tle
        self._stop.clear()
        self._thread = threading.Thread(target=self._dispatch, name="sparse-trt-trtllm-responses", daemon=True)
        self._thread.start()

    def _dispatch(self) -> None:
        """The only caller of await_responses: route each response to its request's queue, host-timestamped."""
        while not self._stop.is_set():
            try:
                responses = self.executor.await_responses(timeout=_POLL)
            except Exception as e:  # noqa: BLE001 - a dead executor: fail every waiting request
                self._fatal = f"{type(e).__name__}: {e}"
                with self._lock:
                    for q in self._queues.values():
                        q.put((time.perf_counter(), None))
                return
            t = time.perf_counter()
            for r in responses:
                with self._lock:
                    q = self._queues.get(r.request_id)
                    if q is None:
                        self._orphans.setdefault(r.request_id, []).append((t, r))
                        continue
                q.put((t, r))

    def _submit(self, prompt: list[int], max_new_tokens: int) -> tuple[int, queue.Queue]:
        tle = self._tle
        req = tle.Request(input_token_ids=list(prompt), max_tokens=max_new_tokens, streaming=True,
                          end_id=self.end_id, pad_id=self.pad_id)
        q: queue.Queue = queue.Queue()
        with self._lock:  # the dispatcher cannot route this request's responses before its queue exists
            rid = self.executor.enqueue_request(req)
            self._queues[rid] = q
            for item in self._orphans.pop(rid, []):
                q.put(item)
        return rid, q

    def _collect(self, rid: int, q: queue.Queue) -> tuple[list[float], bool]:
        times: list[float] = []
        deadline = time.perf_counter() + self.timeout_s
        try:
            while True:
                left = deadline - time.perf_counter()
                try:
                    t, r = q.get(timeout=max(left, 0.0))
                except queue.Empty:
                    raise BackendError(f"request {rid} produced no response within {self.timeout_s:.0f} s",
                                       fix="raise --opt timeout_s, or check the server GPU is not stuck") from None
                if r is None:
                    raise BackendError(f"TensorRT-LLM executor failed: {self._fatal}", fix="see the log above")
                if r.has_error():
                    raise BackendError(f"TensorRT-LLM request {rid} failed: {r.error_msg}",
                                       fix="check the workload against the engine's limits and the KV-cache budget")
                result = r.result
                beams = result.output_token_ids  # streaming: only the tokens new since the last response
                times.extend([t] * (len(beams[0]) if beams else 0))
                if result.is_final:
                    return times, True
        finally:
            with self._lock:
                self._queues.pop(rid, None)

    def generate(self, request: GenerationRequest) -> list[SequenceTiming]:
        if self.executor is None:
            raise RuntimeError("backend not loaded")
        start = time.perf_counter()
        submitted = [self._submit(p, request.max_new_tokens) for p in request.prompts]
        out: list[SequenceTiming] = []
        try:
            for prompt, (rid, q) in zip(request.prompts, submitted, strict=True):
                times, _ = self._collect(rid, q)
                if len(times) != request.max_new_tokens:
                    raise BackendError(f"request {rid} returned {len(times)} tokens, not {request.max_new_tokens}",
                                       fix="keep end_id=-1 so generation never stops early")
                out.append(SequenceTiming(start, times[0], times[-1], len(prompt), len(times), times))
        except BaseException:
            for rid, _q in submitted[len(out):]:
                with self._lock:
                    self._queues.pop(rid, None)
                try:
                    self.executor.cancel_request(rid)
                except Exception:  # noqa: BLE001 - best effort; the original error is what matters
                    pass
            raise
        return out

    def sparse_kernels(self) -> SparseKernels:
        return sparse_kernels_from_report(self.report if not isinstance(self.report, BuildReportError) else
                                          {"_unreadable": self.report.message}, str(self.dir))

    def build_report(self) -> dict[str, Any] | None:
        if isinstance(self.report, BuildReportError):
            return {"_unreadable": self.report.message}
        return None if self.report is None else self.report.to_dict()

    def quality(self):
        extra = [Path(self.opts.manifest)] if self.opts.manifest else []
        typed = None if isinstance(self.report, BuildReportError) else self.report
        return manifest_quality(*extra, self.dir, *report_source_dirs(typed))

    def weights_bytes(self) -> int | None:
        return self.engine_bytes() or None  # engine file size: weights plus kernels/tactics metadata (an upper bound)

    def info(self) -> dict[str, Any]:
        bc = self.cfg.get("build_config", {})
        plugin = bc.get("plugin_config", {}) if isinstance(bc, dict) else {}
        kv = self.kv_cache_bytes()
        eng = self.engine_bytes()
        g = self.geometry
        return {
            "engine_dir": str(self.dir),
            "runtime": "tensorrt_llm.bindings.executor (streaming requests, host perf_counter timestamps)",
            "weights_bytes_note": "engine file size (weights + kernel metadata)",
            "gemm_plugin": plugin.get("gemm_plugin") if isinstance(plugin, dict) else None,
            "weight_sparsity": bc.get("weight_sparsity") if isinstance(bc, dict) else None,
            "kv_cache": {
                "max_tokens": self.kv_tokens,
                "source": self.kv_source,
                "free_gpu_memory_fraction": self.kv_fraction,
                "bytes_per_token": g.bytes_per_token if g else None,
                "tokens_per_block": g.tokens_per_block if g else None,
                "dtype": g.dtype if g else None,
                "bytes": kv,
            },
            "memory": {
                "engine_bytes": eng,
                "kv_cache_bytes": kv,
                "configured_total_bytes": eng + kv if kv is not None else None,
                "note": "engine file bytes + configured KV-cache bytes; TensorRT-LLM allocates outside torch, so torch "
                        "allocator peaks do not describe it",
            },
        }

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.executor is not None:
            try:
                self.executor.shutdown()
            except Exception:  # noqa: BLE001 - close must not raise
                pass
            self.executor = None
