"""``triton``: requests to a running Triton server over gRPC, streamed (decoupled) so TTFT is real.

The server side lives in ``sparse_trt/serve/``. This client speaks the token-id interface
of TensorRT-LLM's ``tensorrt_llm`` Triton model by default; each sequence of a request is sent as
its own streaming request (the server batches in flight). Any model with the same tensor names
works (e.g. a PyTorch python-backend model); otherwise subclass :class:`TritonBackend` and override
:meth:`build_inputs` / :meth:`tokens_in` and register it under a new name.

``--model`` is the Triton model name. Options (``--opt KEY=VALUE``):
``url`` (default localhost:8001), ``engine_dir`` (read its build_report.json and limits: otherwise
whether sparse kernels ran is *unknown*), ``vocab_size`` (prompt ids are drawn below it; default:
the engine's, else 1000), ``end_id`` (default -1: never stop early), ``timeout_s`` (default 600),
``input_ids``/``input_lengths``/``request_output_len``/``streaming``/``end_id_name``/``output_ids``
(tensor names). ``interface=text`` (+ ``tokenizer=DIR``): call the text entry model of a repository
written by ``sparse-trt triton repo`` instead (see ``sparse_trt.serve.triton.bench_adapter``);
``protocol=http`` (+ ``http_url=HOST:PORT``, default localhost:8000) sends those text requests to the HTTP
``generate_stream`` endpoint instead of gRPC (server-sent events, one per token), as HTTP clients do; requests
that carry text prompts (``GenerationRequest.texts``, as ``sparse-trt triton load`` sends) need no
tokenizer. Memory: the server's (``metrics_url=http://HOST:PORT/metrics`` for its GPU memory; a local
server's process tree RSS is found through /proc, or ``server_pid=PID``), labelled server.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_trt.core.deps import require
from sparse_trt.engine.folder import read_engine_dir

from ..errors import BackendError
from ..results import SparseKernels
from ..workload import Limits
from .base import Backend, GenerationRequest, SequenceTiming
from .engine_info import (
    engine_limits,
    engine_vocab,
    manifest_quality,
    read_build_report,
    report_source_dirs,
    sparse_kernels_from_report,
)

DEFAULT_NAMES = {
    "input_ids": "input_ids",
    "input_lengths": "input_lengths",
    "request_output_len": "request_output_len",
    "streaming": "streaming",
    "end_id_name": "end_id",
    "output_ids": "output_ids",
}


class _Stream:
    """One gRPC client + bidirectional stream per thread; responses routed to per-request queues."""

    def __init__(self, grpc, url: str) -> None:
        self.client = grpc.InferenceServerClient(url=url)
        self.queues: dict[str, queue.Queue] = {}
        self.lock = threading.Lock()
        self.client.start_stream(callback=self._callback)

    def _callback(self, result, error) -> None:
        t = time.perf_counter()
        if error is not None:
            with self.lock:
                qs = list(self.queues.values())
            for q in qs:
                q.put((t, None, error))
            return
        rid = result.get_response().id
        with self.lock:
            q = self.queues.get(rid)
        if q is not None:
            q.put((t, result, None))

    def close(self) -> None:
        try:
            self.client.stop_stream()
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


@dataclass(frozen=True)
class TritonOptions:
    url: str = "localhost:8001"  # gRPC endpoint
    protocol: str = "grpc"  # grpc, or http (Triton's generate_stream endpoint, as AIPerf's template client)
    http_url: str = "localhost:8000"
    interface: str = "tokens"  # tokens: TensorRT-LLM's token-id model; text: our entry models (text in, text out)
    tokenizer: str | None = None  # with interface=text: token counts from this tokenizer
    engine_dir: str | None = None  # the engine being served: its limits and build report
    manifest: str | None = None  # sparsity.json folder, for quality
    vocab_size: int | None = None
    end_id: int = -1  # -1: never stop early
    temperature: float | None = None
    ignore_eos: bool = True
    timeout_s: float = 600.0
    metrics_url: str | None = None  # the server's /metrics, for its GPU memory
    server_pid: int | None = None  # a local server's PID, for its process-tree RSS
    # tensor names of the token-id interface
    input_ids: str = "input_ids"
    input_lengths: str = "input_lengths"
    request_output_len: str = "request_output_len"
    streaming: str = "streaming"
    end_id_name: str = "end_id"
    output_ids: str = "output_ids"

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"protocol={self.protocol} is not known: use grpc (default) or http")
        if self.interface not in ("tokens", "text"):
            raise ValueError(f"interface={self.interface} is not known: use tokens (default) or text")
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be > 0")


class TritonBackend(Backend):
    name = "triton"
    Options = TritonOptions
    thread_safe = True
    memory_is_local = False
    model_kind = "Triton model name (server given by --opt url=HOST:PORT)"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        o: TritonOptions = self.opts
        self.url, self.protocol, self.http_url = o.url, o.protocol, o.http_url
        self.names = {k: getattr(o, k) for k in DEFAULT_NAMES}
        engine = read_engine_dir(o.engine_dir) if o.engine_dir else None
        self.engine_dir: Path | None = engine.path if engine else None
        self.cfg = engine.config if engine else {}
        self.report = read_build_report(self.engine_dir) if self.engine_dir else None
        self._grpc = None
        self._local = threading.local()
        self._streams: list[_Stream] = []
        self._streams_lock = threading.Lock()
        self._counter = 0
        self._text = None  # sparse_trt.serve.triton.bench_adapter.TextInterface with --opt interface=text
        self._text_only = False

    def limits(self) -> Limits:
        if self.cfg:
            return engine_limits(self.cfg)
        return Limits(source="unknown: pass --opt engine_dir=ENGINE for the engine's limits")

    def load(self) -> None:
        self._grpc = require("tritonclient.grpc", "benchmarking a Triton server")
        if self.opts.interface == "text" and self.opts.tokenizer:
            from sparse_trt.serve.triton.bench_adapter import TextInterface

            self._text = TextInterface(self.spec.options)
        elif self.opts.interface == "text":
            self._text_only = True  # text prompts only (triton load): no tokenizer needed
        if self.protocol == "http":
            self._check_http()
            return
        client = self._grpc.InferenceServerClient(url=self.url)
        try:
            live = client.is_server_live()
            ready = client.is_model_ready(self.spec.model)
        except Exception as e:  # noqa: BLE001 - InferenceServerException / grpc errors
            raise BackendError(f"Triton server at {self.url} is not reachable ({e})",
                               fix="start it (see sparse_trt/serve) or pass --opt url=HOST:PORT") from None
        finally:
            client.close()
        if not live or not ready:
            raise BackendError(f"Triton model '{self.spec.model}' is not ready on {self.url}",
                               fix="check the server log and the model repository")

    def _check_http(self) -> None:
        import urllib.error
        import urllib.request

        url = f"http://{self.http_url}/v2/models/{self.spec.model}/ready"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - the user's server
                ok = r.status == 200
        except urllib.error.HTTPError:
            ok = False
        except (urllib.error.URLError, OSError) as e:
            raise BackendError(f"Triton server at http://{self.http_url} is not reachable ({e})",
                               fix="start it (sparse-trt triton serve) or pass --opt http_url=HOST:PORT") from None
        if not ok:
            raise BackendError(f"Triton model '{self.spec.model}' is not ready on http://{self.http_url}",
                               fix="check the server log and the model repository")

    def vocab_size(self) -> int:
        if self._text_only:
            from sparse_trt.serve.triton.errors import TokenizerError

            raise TokenizerError("--opt interface=text with token-id prompts needs --opt tokenizer=DIR",
                                 fix="add --opt tokenizer=PATH/TO/HF_MODEL (the served model's folder)")
        if self.opts.vocab_size is not None:
            return int(self.opts.vocab_size)
        if self._text is not None:
            return self._text.vocab_size
        return engine_vocab(self.cfg) or 1000

    # -- request building: override for other model interfaces -------------------------------------
    def build_inputs(self, prompt: list[int], max_new_tokens: int) -> list[Any]:
        if self._text is not None:
            return self._text.build_inputs(self._grpc, prompt, max_new_tokens)
        g = self._grpc
        n = self.names
        arrays = [
            (n["input_ids"], np.asarray([prompt], dtype=np.int32), "INT32"),
            (n["input_lengths"], np.asarray([[len(prompt)]], dtype=np.int32), "INT32"),
            (n["request_output_len"], np.asarray([[max_new_tokens]], dtype=np.int32), "INT32"),
            (n["streaming"], np.asarray([[True]], dtype=bool), "BOOL"),
            (n["end_id_name"], np.asarray([[self.opts.end_id]], dtype=np.int32), "INT32"),
        ]
        inputs = []
        for name, arr, dt in arrays:
            t = g.InferInput(name, list(arr.shape), dt)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return inputs

    def build_text_inputs(self, text: str, max_new_tokens: int) -> list[Any]:
        from sparse_trt.serve.triton.client import SamplingParams, _inputs

        temp, ignore_eos = self.opts.temperature, self.opts.ignore_eos
        return _inputs(self._grpc, text, SamplingParams(max_tokens=max_new_tokens, temperature=temp, ignore_eos=ignore_eos),
                       stream=True)

    def tokens_in(self, result) -> int:
        """How many new tokens one streamed response carries."""
        if self._text is not None or self._text_only:
            # one streamed response = one token; the empty final response carries none
            return 1 if any(o.name == "text_output" for o in result.get_response().outputs) else 0
        arr = result.as_numpy(self.names["output_ids"])
        return 0 if arr is None else int(arr.shape[-1])

    # -- generation ---------------------------------------------------------------------------------
    def _stream(self) -> _Stream:
        s = getattr(self._local, "stream", None)
        if s is None:
            s = _Stream(self._grpc, self.url)
            self._local.stream = s
            with self._streams_lock:
                self._streams.append(s)
        return s

    def _next_id(self) -> str:
        with self._streams_lock:
            self._counter += 1
            return f"sparse-trt-{self._counter}"

    def _http_sequence(self, text: str, max_new_tokens: int, n_in: int) -> SequenceTiming:
        """One sequence over HTTP ``generate_stream`` (server-sent events, one per token)."""
        from sparse_trt.serve.triton.client import SamplingParams, http_generate_stream

        temp, ignore_eos = self.opts.temperature, self.opts.ignore_eos
        params = SamplingParams(max_tokens=max_new_tokens, temperature=temp, ignore_eos=ignore_eos)
        timeout = self.opts.timeout_s
        start = time.perf_counter()
        times = [time.perf_counter() for ev in http_generate_stream(self.http_url, text, params, model=self.spec.model,
                                                                      timeout_s=timeout) if "text_output" in ev]
        end = times[-1] if times else time.perf_counter()
        return SequenceTiming(start, times[0] if times else end, end, n_in, len(times), times)

    def _generate_http(self, request: GenerationRequest) -> list[SequenceTiming]:
        texts = request.texts
        if texts is None:
            if self._text is None:
                raise BackendError("--opt protocol=http sends text: it needs --opt interface=text and --opt tokenizer=DIR",
                                   fix="add --opt interface=text --opt tokenizer=PATH/TO/HF_MODEL")
            texts = [self._text.prompt_text(p) for p in request.prompts]
        if len(texts) == 1:
            return [self._http_sequence(texts[0], request.max_new_tokens, len(request.prompts[0]))]
        out: list[SequenceTiming | None] = [None] * len(texts)
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                out[i] = self._http_sequence(texts[i], request.max_new_tokens, len(request.prompts[i]))
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [o for o in out if o is not None]

    def generate(self, request: GenerationRequest) -> list[SequenceTiming]:
        if self.protocol == "http":
            return self._generate_http(request)
        if self._grpc is None:
            raise RuntimeError("backend not loaded")
        s = self._stream()
        timeout = self.opts.timeout_s
        ids = [self._next_id() for _ in request.prompts]
        qs = {rid: queue.Queue() for rid in ids}
        with s.lock:
            s.queues.update(qs)
        texts = request.texts
        if texts is not None and len(texts) != len(request.prompts):
            raise ValueError("GenerationRequest.texts and prompts differ in length")
        inputs = [self.build_text_inputs(texts[i], request.max_new_tokens) if texts is not None
                  else self.build_inputs(p, request.max_new_tokens) for i, p in enumerate(request.prompts)]
        start = time.perf_counter()
        try:
            for rid, inp in zip(ids, inputs, strict=True):
                s.client.async_stream_infer(self.spec.model, inp, request_id=rid, enable_empty_final_response=True)
            out = []
            for rid, prompt in zip(ids, request.prompts, strict=True):
                times: list[float] = []
                while True:
                    try:
                        t, result, error = qs[rid].get(timeout=timeout)
                    except queue.Empty:
                        raise BackendError(f"Triton request {rid} got no response for {timeout:.0f}s",
                                           fix="check the server; raise --opt timeout_s=") from None
                    if error is not None:
                        raise BackendError(f"Triton returned an error: {error}")
                    k = self.tokens_in(result)
                    times.extend([t] * k)
                    params = result.get_response().parameters
                    if "triton_final_response" in params and params["triton_final_response"].bool_param:
                        break
                end = times[-1] if times else time.perf_counter()
                out.append(SequenceTiming(start, times[0] if times else end, end, len(prompt), len(times), times))
            return out
        finally:
            with s.lock:
                for rid in ids:
                    s.queues.pop(rid, None)

    def sparse_kernels(self) -> SparseKernels:
        if self.engine_dir is None:
            return SparseKernels(None, "unknown: no engine given",
                                 detail="pass --opt engine_dir=ENGINE so its build_report.json says whether sparse kernels ran")
        return sparse_kernels_from_report(self.report, str(self.engine_dir))

    def build_report(self) -> dict[str, Any] | None:
        return self.report

    def token_counts(self) -> str:
        if self.protocol == "http":
            return "server: one server-sent event per generated token (HTTP generate_stream)"
        if self._text is not None or self._text_only:
            return "server: one streamed response per generated token (text interface)"
        return f"server: lengths of the streamed '{self.names['output_ids']}' tensors"

    def server_memory_probe(self):
        from ..server_memory import ServerMemoryProbe

        return ServerMemoryProbe.for_url(self.url, self.spec.options)

    def quality(self):
        dirs = ([self.engine_dir] if self.engine_dir else []) + report_source_dirs(self.report)
        if self.opts.manifest:
            dirs.insert(0, Path(self.opts.manifest))
        return manifest_quality(*dirs)

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "protocol": self.protocol, "model": self.spec.model, "tensor_names": dict(self.names),
                "engine_dir": str(self.engine_dir) if self.engine_dir else None}

    def close(self) -> None:
        for s in self._streams:
            s.close()
        self._streams.clear()
