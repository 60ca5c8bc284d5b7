"""Streaming Triton client: per-request TTFT and inter-token latency from response arrival times.

Talks to the entry model of a repository written by ``sparse-trt triton repo`` (either backend): inputs
``text_input``, ``max_tokens``, ``stream`` (+ optional sampling / ``ignore_eos``), output ``text_output``.
With ``stream=True`` the model is decoupled and sends one response per generated token, so a response's
arrival time is that token's arrival time. Independent of the benchmark package: ``run_load`` is the
function a benchmark backend calls.

gRPC (``tritonclient[grpc]``) for streaming; plain urllib for the HTTP generate endpoints.
"""

from __future__ import annotations

import json
import queue
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sparse_trt.core.deps import require

from .errors import TritonClientError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float | None = None  # None/0: greedy
    top_k: int | None = None
    top_p: float | None = None
    random_seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens tokens (benchmarks)

    def as_inputs(self) -> dict[str, Any]:
        d: dict[str, Any] = {"max_tokens": int(self.max_tokens)}
        for k in ("temperature", "top_k", "top_p", "random_seed"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.ignore_eos:
            d["ignore_eos"] = True
        return d


_DTYPES = {"max_tokens": (np.int32, "INT32"), "temperature": (np.float32, "FP32"), "top_k": (np.int32, "INT32"),
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
        self.timeout_s = timeout_s
        try:
            self.client = self.g.InferenceServerClient(url=url)
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own exception types
            raise TritonClientError(f"cannot create a gRPC client for {url}: {e}", fix="check the address (host:port)") from None
        self.current: StreamResult | None = None
        self.done = threading.Event()
        self.client.start_stream(callback=self._on_response)

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
        if final:
            r.end = now
            r.text = "".join(r.pieces)
            self.done.set()

    def run(self, model: str, prompt: str, params: SamplingParams, stream: bool = True) -> StreamResult:
        r = StreamResult(prompt)
        self.current = r
        self.done.clear()
        inputs = _inputs(self.g, prompt, params, stream)
        r.start = time.perf_counter()
        try:
            self.client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        except Exception as e:  # noqa: BLE001
            r.error, r.end = f"request could not be sent: {e}", time.perf_counter()
            return r
        if not self.done.wait(self.timeout_s):
            r.error, r.end = f"no final response within {self.timeout_s:.0f}s", time.perf_counter()
        if not r.text and r.pieces:
            r.text = "".join(r.pieces)
        self.current = None
        return r

    def close(self) -> None:
        try:
            self.client.stop_stream()
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass


def generate_stream(url: str, prompt: str, params: SamplingParams | None = None, *, model: str = "ensemble",
                    stream: bool = True, timeout_s: float = 300.0) -> StreamResult:
    """One request over gRPC; the result holds the text pieces and their arrival times."""
    s = _Stream(url, timeout_s)
    try:
        return s.run(model, prompt, params or SamplingParams(), stream)
    finally:
        s.close()


# ------------------------------------------------------------------------------------------ load
@dataclass
class LoadResult:
    url: str
    model: str
    concurrency: int
    max_tokens: int
    wall_s: float
    results: list[StreamResult]

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        itl = [x for r in ok for x in r.itl_s]
        e2e = [r.e2e_s for r in ok]
        toks = sum(r.output_tokens for r in ok)
        return {
            "url": self.url, "model": self.model, "concurrency": self.concurrency, "max_tokens": self.max_tokens,
            "requests": len(self.results), "errors": len(self.results) - len(ok), "output_tokens": toks,
            "wall_s": self.wall_s,
            "throughput_tok_s": toks / self.wall_s if self.wall_s > 0 else 0.0,
            "requests_per_s": len(ok) / self.wall_s if self.wall_s > 0 else 0.0,
            "ttft_s": _stats(ttft), "itl_s": _stats(itl), "e2e_s": _stats(e2e),
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d["requests_detail"] = [
            {k: v for k, v in asdict(r).items() if k != "pieces"} | {"ttft_s": r.ttft_s, "output_tokens": r.output_tokens}
            for r in self.results
        ]
        return d


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def _stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "p50": _pct(xs, 50), "p90": _pct(xs, 90), "p99": _pct(xs, 99),
            "min": min(xs), "max": max(xs)}


def run_load(url: str, prompts: Sequence[str], params: SamplingParams | None = None, *, model: str = "ensemble",
             concurrency: int = 1, stream: bool = True, timeout_s: float = 300.0) -> LoadResult:
    """Closed loop: ``concurrency`` clients, each with its own gRPC stream, send the prompts until all are done.

    Throughput = streamed tokens of successful requests / wall time from the first send to the last
    final response. Request order in ``results`` follows ``prompts``.
    """
    if concurrency < 1:
        raise TritonClientError(f"concurrency must be >= 1, got {concurrency}", fix="pass 1 or more")
    if not prompts:
        raise TritonClientError("no prompts to send", fix="give at least one prompt")
    params = params or SamplingParams()
    work: queue.Queue[tuple[int, str]] = queue.Queue()
    for i, p in enumerate(prompts):
        work.put((i, p))
    results: list[StreamResult | None] = [None] * len(prompts)
    n = min(concurrency, len(prompts))
    streams = [_Stream(url, timeout_s) for _ in range(n)]  # connect before the clock starts
    failures: list[BaseException] = []

    def worker(s: _Stream) -> None:
        try:
            while True:
                try:
                    i, p = work.get_nowait()
                except queue.Empty:
                    return
                results[i] = s.run(model, p, params, stream)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            failures.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for s in streams:
        s.close()
    if failures:
        raise TritonClientError(f"a client thread failed: {failures[0]}", fix="see the server log") from failures[0]
    done = [r for r in results if r is not None]
    return LoadResult(url, model, n, params.max_tokens, wall, done)


def sweep(url: str, prompts: Sequence[str], concurrency_levels: Sequence[int], params: SamplingParams | None = None,
          **kw) -> list[LoadResult]:
    return [run_load(url, prompts, params, concurrency=c, **kw) for c in concurrency_levels]


# ------------------------------------------------------------------------------------------ http
def _http_body(prompt: str, params: SamplingParams, stream: bool) -> bytes:
    return json.dumps({"text_input": prompt, "stream": stream} | params.as_inputs()).encode("utf-8")


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
        raise TritonClientError(f"generate on {url}/{model} failed ({e.code}): {e.read().decode(errors='replace')}",
                                fix="check the model name and inputs") from None
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
        raise TritonClientError(f"generate_stream on {url}/{model} failed ({e.code}): {e.read().decode(errors='replace')}",
                                fix="check the model name and inputs") from None
    except (urllib.error.URLError, OSError) as e:
        raise TritonClientError(f"cannot reach {url}: {e}", fix="is the server running? (sparse-trt triton serve)") from None
