"""The backend interface every benchmark backend implements, and the registry that names them.

Writing a backend (e.g. the Triton one in ``sparse_trt/serve/``)
------------------------------------------------------------------
Subclass :class:`Backend`, set ``name``, and register it::

    from sparse_trt.bench.backends.base import Backend, register_backend

    @register_backend
    class MyBackend(Backend):
        name = "mine"
        ...

Built-in backends are listed in ``BUILTIN`` as ``"module:Class"`` strings and imported only when asked
for, so a missing optional dependency (TensorRT-LLM, tritonclient) never breaks the others.
A registered class overrides a built-in of the same name.

Life cycle, as the runner drives it::

    b = create_backend(name, BackendSpec(...))   # __init__: cheap checks only (paths, device); no heavy imports
    b.limits()                                    # Limits known before loading (engine config, model config)
    b.load()                                      # heavy: import runtimes, load weights, verify sparse kernels
    b.vocab_size()                                # prompts are random token ids below this
    b.generate(GenerationRequest(...))            # many times, possibly from several threads (see thread_safe)
    b.sparse_kernels()                            # SparseKernels: did sparse kernels run? be honest
    b.token_counts()                              # where output token counts come from (engine, server, ...)
    b.model_signature()                           # architecture and shapes, for `bench compare`'s same-model check
    b.server_memory_probe()                       # client backends: the server's memory (None: in-process)
    b.weights_bytes()                             # bytes the weights occupy on the device, None if unknown
    b.close()

``generate`` is called by the load generator (sparse_trt/bench/loadgen.py) from ``concurrency`` worker
threads when ``thread_safe`` is True (else calls are serialised and the wait counts as latency). It must
produce exactly ``max_new_tokens`` tokens per sequence (ignore end-of-sequence) and
time it with :class:`~sparse_trt.bench.timing.Clock` (which synchronises the device), returning one
:class:`SequenceTiming` per prompt: when the request started, when that sequence's first output token
was available to the caller, when it finished, and, if the backend streams, the time of every token.
Raise :class:`~sparse_trt.core.errors.SparseTrtError` subclasses for anything the user can fix.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sparse_trt.core.errors import InputError
from sparse_trt.core.options import describe, parse_options

from ..memory import ConfiguredMemory
from ..results import SparseKernels
from ..workload import Limits


@dataclass(frozen=True)
class NoOptions:
    """A backend without ``--opt`` settings."""


@dataclass(frozen=True)
class BackendSpec:
    """What to run and where. ``options`` carries backend-specific KEY=VALUE settings (--opt)."""

    model: str  # model folder / hub id / engine folder / Triton model name, per backend
    device: torch.device
    dtype: torch.dtype | None = None  # None: the checkpoint's / engine's own dtype
    options: dict[str, str] = field(default_factory=dict)
    trust_remote_code: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    prompts: list[list[int]]  # one list of token ids per sequence
    max_new_tokens: int
    #: text prompts (one per sequence) for backends that take text (``triton`` with interface=text);
    #: when given, ``prompts`` may be empty lists
    texts: list[str] | None = None


@dataclass(frozen=True)
class SequenceTiming:
    """perf_counter() times (seconds) for one sequence of a request."""

    start: float
    first_token: float
    end: float
    input_tokens: int
    output_tokens: int
    token_times: list[float] = field(default_factory=list)  # time each output token arrived, if known


class Backend(ABC):
    name: ClassVar[str] = ""
    #: may generate() be called from several threads at once? If False the runner serialises calls
    #: (requests then queue, as they would behind a single-worker server, and that queueing is measured).
    thread_safe: ClassVar[bool] = False
    #: what --model means for this backend, for messages
    model_kind: ClassVar[str] = "model"
    #: does the model run in this process? (False for clients of a server: this process's memory is the
    #: client's, measured only when asked and labelled "client"; the server's comes from server_memory_probe)
    memory_is_local: ClassVar[bool] = True

    #: the backend's ``--opt KEY=VALUE`` settings: a frozen dataclass with defaults; unknown keys are refused
    Options: ClassVar[type] = NoOptions

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.opts: Any = parse_options(self.Options, spec.options, f"backend '{self.name}'",
                                       f"options of {self.name}: {describe(self.Options)} (docs/bench.md)")

    @abstractmethod
    def limits(self) -> Limits: ...

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def generate(self, request: GenerationRequest) -> list[SequenceTiming]: ...

    @abstractmethod
    def sparse_kernels(self) -> SparseKernels: ...

    def weights_bytes(self) -> int | None:
        return None

    #: does the work allocate through torch's caching allocator? False (e.g. TensorRT-LLM's executor): torch
    #: peaks mean nothing for it, and the memory probes report ``configured_memory()`` instead.
    torch_allocator: ClassVar[bool] = True

    def configured_memory(self) -> ConfiguredMemory | None:
        """Device memory the backend reserves by configuration (engine + KV cache), where torch cannot see it."""
        return None

    def memory_device(self) -> torch.device:
        """The device whose memory the probes should watch."""
        return self.spec.device

    def dtype_name(self) -> str | None:
        return None if self.spec.dtype is None else str(self.spec.dtype).removeprefix("torch.")

    def quality(self) -> tuple[str | None, dict[str, Any]]:
        """(pattern, quality dict) from the model's sparsity.json, if it has one."""
        return None, {}

    def build_report(self) -> dict[str, Any] | None:
        return None

    def token_counts(self) -> str:
        """Where the output token counts come from, for the results (e.g. "engine: output ids per step")."""
        return "backend"

    def model_signature(self) -> dict[str, Any] | None:
        """Architecture and shapes (model_type, hidden size, layers, heads, vocab ...) or None when unknown.

        ``bench compare`` refuses two models whose signatures differ (unless --allow-different-models).
        """
        return None

    def server_memory_probe(self) -> Any:
        """For client backends: an object with ``start()`` and ``stop() -> ServerMemory | None``; else None."""
        return None

    def info(self) -> dict[str, Any]:
        """Free-form facts worth keeping in the results (kernel choices, engine settings ...)."""
        return {}

    def close(self) -> None:
        """Release memory/connections. Called once; must not raise."""
        return None


BUILTIN: dict[str, str] = {
    "hf": "sparse_trt.bench.backends.hf:HFBackend",
    "torch-2of4": "sparse_trt.bench.backends.torch_2of4:Torch2of4Backend",
    "trtllm": "sparse_trt.bench.backends.trtllm:TrtllmBackend",
    "triton": "sparse_trt.bench.backends.triton:TritonBackend",
}

_REGISTERED: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available under ``cls.name`` (overrides a built-in of that name)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTERED[cls.name] = cls
    return cls


def backend_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTERED))


def backend_class(name: str) -> type[Backend]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = BUILTIN.get(name)
    if target is None:
        raise InputError(f"unknown backend '{name}'", fix=f"use one of: {', '.join(backend_names())}")
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def create_backend(name: str, spec: BackendSpec) -> Backend:
    return backend_class(name)(spec)
