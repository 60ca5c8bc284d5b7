"""Streaming Triton client: per-request TTFT and inter-token latency from response arrival times.

Talks to the entry model of a repository written by ``sparse-trt triton repo`` (either backend): inputs
``text_input``, ``max_tokens``, ``stream`` (+ optional sampling / ``ignore_eos``), output ``text_output``.
With ``stream=True`` the model is decoupled and sends one response per generated token, so a response's
arrival time is that token's arrival time. Load tests use the benchmark package's load generator
(``sparse-trt bench run --backend triton`` / ``sparse-trt triton load``), which calls this client.

gRPC (``tritonclient[grpc]``) for streaming; plain urllib for the HTTP generate endpoints.

Parameters are checked before anything is sent (``max_tokens`` must be 1..2**31-1: the server takes INT64
so a larger JSON number cannot wrap, and refuses anything beyond the model's context with HTTP 400 /
INVALID_ARG). A request that times out, or is interrupted with Ctrl-C, is cancelled on the server
(``stop_stream(cancel_requests=True)``), so the client returns at once instead of waiting for the server.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparse_trt.core.deps import require

from .errors import RequestInputError, TritonClientError

__all__ = ["RequestInputError", "SamplingParams", "StreamResult", "TritonClientError", "generate_stream",
           "http_generate", "http_generate_stream"]

MAX_TOKENS_LIMIT = 2**31 - 1  # what any engine takes (TensorRT-LLM's request_output_len is INT32)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float | None = None  # None/0: greedy
    top_k: int | None = None
    top_p: float | None = None
    random_seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens tokens (benchmarks)

    def __post_init__(self) -> None:
        """Refuse values the server would refuse (or that would wrap on the way) before anything is sent."""
        mt = self.max_tokens
        if not _is_int(mt) or not 1 <= int(mt) <= MAX_TOKENS_LIMIT:
            raise RequestInputError(f"max_tokens {mt!r} is out of range: it must be a whole number from 1 to "
                                    f"{MAX_TOKENS_LIMIT} (and at most the model's context minus the prompt)",
                                    fix="pass a smaller --max-tokens, e.g. 64")
        if self.temperature is not None and not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise RequestInputError(f"temperature {self.temperature!r} must be >= 0", fix="0 or omitted = greedy")
        if self.top_k is not None and not (_is_int(self.top_k) and 0 <= int(self.top_k) <= MAX_TOKENS_LIMIT):
            raise RequestInputError(f"top_k {self.top_k!r} must be a whole number >= 0", fix="e.g. 50")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise RequestInputError(f"top_p {self.top_p!r} must be in (0, 1]", fix="e.g. 0.9")
        if self.random_seed is not None and not (_is_int(self.random_seed) and 0 <= int(self.random_seed) < 2**64):
            raise RequestInputError(f"seed {self.random_seed!r} must be a whole number from 0 to 2**64-1", fix="e.g. 0")

    def as_inputs(self) -> dict[str, Any]:
        d: dict[str, Any] = {"max_tokens": int(self.max_tokens)}
        for k in ("temperature", "top_k", "top_p", "random_seed"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.ignore_eos:
            d["ignore_eos"] = True
        return d


_DTYPES = {"max_tokens": (np.int64, "INT64"), "temperature": (np.float32, "FP32"), "top_k": (np.int32, "INT32"),
           "top_p": (np.float32, "FP32"), "random_seed": (np.uint64, "UINT64"), "ignore_eos": (np.bool_, "BOOL"),
           "stream": (np.bool_, "BOOL")}


@dataclass
class StreamResult:
    """One request. Times are time.perf_counter() seconds."""

    prompt: str
    text: str = ""
    start: float = 0.0
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)  # arrival of each streamed response
    pieces: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft_s(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def itl_s(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def e2e_s(self) -> float:
        return self.end - self.start


def _grpc():
    return require("tritonclient.grpc", "streaming requests to Triton")


def _inputs(grpcclient, prompt: str, params: SamplingParams, stream: bool) -> list:
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[prompt.encode("utf-8")]], dtype=np.object_))
    out = [text]
    values = params.as_inputs() | {"stream": bool(stream)}
    for k, v in values.items():
        np_t, tr_t = _DTYPES[k]
        t = grpcclient.InferInput(k, [1, 1], tr_t)
        t.set_data_from_numpy(np.array([[v]], dtype=np_t))
        out.append(t)
    return out


class _Stream:
    """One gRPC bidirectional stream (one client): requests on it run one after another."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.g = _grpc()
        self.url = url
        self.timeout_s = timeout_s
        self.current: StreamResult | None = None
        self.on_piece: Callable[[str, float], None] | None = None
        self.done = threading.Event()
        self._open()

    def _open(self) -> None:
        try:
            self.client = self.g.InferenceServerClient(url=self.url)
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own exception types
            raise TritonClientError(f"cannot create a gRPC client for {self.url}: {e}",
                                    fix="check the address (host:port)") from None
        self.client.start_stream(callback=self._on_response)
        self.broken = False

    def cancel(self) -> None:
        """Cancel what is in flight on this stream (the server stops generating) without waiting for it."""
        with contextlib.suppress(Exception):
            self.client.stop_stream(cancel_requests=True)
        with contextlib.suppress(Exception):
            self.client.close()
        self.broken = True

    def _on_response(self, result, error) -> None:
        now = time.perf_counter()
        r = self.current
        if r is None:
            return
        if error is not None:
            r.error = str(error)
            r.end = now
            self.done.set()
            return
        resp = result.get_response()
        final = False
        p = resp.parameters.get("triton_final_response")
        if p is not None:
            final = p.bool_param
        arr = None
        if any(o.name == "text_output" for o in resp.outputs):
            arr = result.as_numpy("text_output")
        if arr is not None and arr.size:
            v = arr.reshape(-1)[0]
            piece = v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            r.pieces.append(piece)
            r.token_times.append(now)
            if self.on_piece is not None:
                with contextlib.suppress(Exception):
                    self.on_piece(piece, now)
        if final:
            r.end = now
            r.text = "".join(r.pieces)
            self.done.set()

    def run(self, model: str, prompt: str, params: SamplingParams, stream: bool = True,
            on_piece: Callable[[str, float], None] | None = None) -> StreamResult:
        if self.broken:
            self._open()
        r = StreamResult(prompt)
        inputs = _inputs(self.g, prompt, params, stream)
        self.on_piece = on_piece
        self.current = r
        self.done.clear()
        r.start = time.perf_counter()
        try:
            self.client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        except Exception as e:  # noqa: BLE001
            r.error, r.end = f"request could not be sent: {e}", time.perf_counter()
            return r
        try:
            finished = self.done.wait(self.timeout_s)
        except BaseException:  # Ctrl-C: cancel on the server, then let the interrupt through
            self.current = None
            self.cancel()
            raise
        if not finished:
            self.current = None
            self.cancel()  # the server stops generating; we do not wait for it
            r.error, r.end = f"no final response within {self.timeout_s:.0f}s (request cancelled)", time.perf_counter()
        if not r.text and r.pieces:
            r.text = "".join(r.pieces)
        self.current = None
        return r

    def close(self) -> None:
        if self.broken:
            return
        try:
            self.client.stop_stream()
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass


def generate_stream(url: str, prompt: str, params: SamplingParams | None = None, *, model: str = "ensemble",
                    stream: bool = True, timeout_s: float = 300.0,
                    on_piece: Callable[[str, float], None] | None = None) -> StreamResult:
    """One request over gRPC; the result holds the text pieces and their arrival times.

    ``on_piece(text, arrival_time)`` is called for each response as it arrives (from the client's thread).
    """
    s = _Stream(url, timeout_s)
    try:
        return s.run(model, prompt, params or SamplingParams(), stream, on_piece=on_piece)
    finally:
        s.close()


# ------------------------------------------------------------------------------------------ load
def _http_body(prompt: str, params: SamplingParams, stream: bool) -> bytes:
    return json.dumps({"text_input": prompt, "stream": stream} | params.as_inputs()).encode("utf-8")


def _http_error(e: urllib.error.HTTPError, what: str) -> TritonClientError:
    body = e.read().decode(errors="replace")
    for line in body.splitlines() or [body]:  # a JSON body, or server-sent events ("data: {...}")
        text = line[5:].strip() if line.startswith("data:") else line.strip()
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(text).get("error", body)
            break
    fix = {400: "the server refused the request's inputs: see the message", 404: "check the model name (--model)",
           503: "the server is shutting down or not ready; retry later"}.get(e.code, "see the server log")
    return TritonClientError(f"{what} failed (HTTP {e.code}): {body}", fix=fix)


def http_generate(url: str, prompt: str, params: SamplingParams | None = None, *, model: str = "ensemble",
                  timeout_s: float = 300.0) -> dict[str, Any]:
    """POST /v2/models/<model>/generate (one JSON response, the whole completion in text_output)."""
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/generate",
                                 data=_http_body(prompt, params or SamplingParams(), False),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - the user's server
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise _http_error(e, f"generate on {url}/{model}") from None
    except (urllib.error.URLError, OSError) as e:
        raise TritonClientError(f"cannot reach {url}: {e}", fix="is the server running? (sparse-trt triton serve)") from None


def http_generate_stream(url: str, prompt: str, params: SamplingParams | None = None, *, model: str = "ensemble",
                         timeout_s: float = 300.0) -> Iterator[dict[str, Any]]:
    """POST /v2/models/<model>/generate_stream; yields each server-sent event's JSON."""
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/generate_stream",
                                 data=_http_body(prompt, params or SamplingParams(), True),
                                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310
            for raw in r:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:].strip())
                if "error" in event:
                    raise TritonClientError(f"generate_stream on {url}/{model}: {event['error']}", fix="see the server log")
                yield event
    except urllib.error.HTTPError as e:
        raise _http_error(e, f"generate_stream on {url}/{model}") from None
    except (urllib.error.URLError, OSError) as e:
        raise TritonClientError(f"cannot reach {url}: {e}", fix="is the server running? (sparse-trt triton serve)") from None
