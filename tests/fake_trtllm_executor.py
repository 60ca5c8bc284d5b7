"""A stand-in for ``tensorrt_llm.bindings.executor`` (TensorRT-LLM 1.2), for CPU tests.

Same class, method and keyword names as the real bindings (as read from TensorRT-LLM's pybind
``executor.cpp`` and its use in ``runtime/model_runner_cpp.py`` and ``examples/bindings/executor``):
``Executor(model_path, ModelType.DECODER_ONLY, ExecutorConfig)``, ``enqueue_request(request) -> id``,
``await_responses(timeout=timedelta) -> list[Response]``, ``cancel_request(id)``, ``shutdown()``;
``Request(input_token_ids=, max_tokens=, streaming=, end_id=, pad_id=)``;
``KvCacheConfig(free_gpu_memory_fraction=, max_tokens=, enable_block_reuse=)``;
``ExecutorConfig(max_beam_width=, kv_cache_config=)``; ``Response.request_id / has_error() / error_msg /
result.output_token_ids / result.is_final``.

Semantics kept: in-flight batching (every active request advances one token per engine step, new
requests join between steps), streaming responses carry only the tokens new since the last one, a
request whose prompt + max_tokens exceed the KV budget waits until blocks free up, and
``await_responses`` returns whatever is ready (or an empty list when its timeout passes).
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta


class ModelType(enum.Enum):
    DECODER_ONLY = 0
    ENCODER_DECODER = 1


@dataclass
class KvCacheConfig:
    free_gpu_memory_fraction: float | None = None
    max_tokens: int | None = None
    enable_block_reuse: bool = True


@dataclass
class ExecutorConfig:
    max_beam_width: int = 1
    kv_cache_config: KvCacheConfig = field(default_factory=KvCacheConfig)
    max_batch_size: int | None = None


@dataclass
class Request:
    input_token_ids: list
    max_tokens: int
    streaming: bool = False
    end_id: int | None = None
    pad_id: int | None = None


@dataclass
class Result:
    output_token_ids: list
    is_final: bool


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


class Executor:
    instances: list = []
    step_s = 0.002

    def __init__(self, model_path, model_type, executor_config):
        assert model_type is ModelType.DECODER_ONLY
        self.model_path = model_path
        self.config = executor_config
        self._cv = threading.Condition()
        self._next_id = 1
        self._waiting: list = []  # [id, request]
        self._active: dict = {}  # id -> [request, produced]
        self._ready: list = []
        self._stop = False
        self.max_in_flight = 0
        self.cancelled: list = []
        self._t = threading.Thread(target=self._engine, daemon=True)
        self._t.start()
        Executor.instances.append(self)

    def _kv_used(self) -> int:
        return sum(len(r.input_token_ids) + r.max_tokens for r, _ in self._active.values())

    def _engine(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                budget = self.config.kv_cache_config.max_tokens
                while self._waiting:
                    rid, req = self._waiting[0]
                    need = len(req.input_token_ids) + req.max_tokens
                    if budget is not None and need > budget:
                        self._waiting.pop(0)
                        self._ready.append(Response(rid, error_msg=f"request {rid} needs {need} KV tokens > {budget}"))
                        continue
                    if budget is not None and self._kv_used() + need > budget:
                        break
                    self._waiting.pop(0)
                    self._active[rid] = [req, 0]
                self.max_in_flight = max(self.max_in_flight, len(self._active))
                for rid in list(self._active):
                    req, produced = self._active[rid]
                    produced += 1
                    final = produced >= req.max_tokens
                    self._ready.append(Response(rid, Result([[1000 + produced]], final)))
                    if final:
                        del self._active[rid]
                    else:
                        self._active[rid][1] = produced
                self._cv.notify_all()
            time.sleep(self.step_s)

    def enqueue_request(self, request: Request) -> int:
        assert request.streaming, "sparse_trt streams"
        with self._cv:
            rid = self._next_id
            self._next_id += 1
            self._waiting.append((rid, request))
            return rid

    def await_responses(self, timeout: timedelta | None = None) -> list:
        deadline = time.monotonic() + (timeout.total_seconds() if timeout is not None else 1e9)
        with self._cv:
            while not self._ready and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cv.wait(left)
            out, self._ready = self._ready, []
            return out

    def cancel_request(self, id: int) -> None:  # noqa: A002 - the bindings' keyword name
        with self._cv:
            self.cancelled.append(id)
            self._active.pop(id, None)

    def can_enqueue_requests(self) -> bool:
        return True

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
