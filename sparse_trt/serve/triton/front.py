"""A thin HTTP front for tritonserver: refuses malformed JSON with 400 and new requests with 503 while draining.

tritonserver's HTTP frontend answers a request body that is not JSON with 500 (its JSON parser reports
an internal error), and keeps routing requests while it shuts down. ``sparse-trt triton serve`` therefore
listens on the user's HTTP port itself and forwards every request to tritonserver's HTTP port on the
loopback interface; before forwarding a POST whose body is JSON (``generate``, ``generate_stream``,
``infer`` without a binary header) it parses the body and answers 400 naming the parse error, and once
shutdown has begun it answers inference requests with 503. Responses (including server-sent events)
are passed through as they arrive, chunk by chunk. gRPC goes to tritonserver directly.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

_INFER_PATHS = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/(generate|generate_stream|infer)/?$")
# the scalar inputs of `sparse-trt triton repo` entry models: (check, what it must be)
_FIELD_TYPES = {
    "text_input": (lambda v: isinstance(v, str), "a string"),
    "max_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "random_seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0"),
    "temperature": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "top_p": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
    "ignore_eos": (lambda v: isinstance(v, bool), "true or false"),
}
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host", "expect"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, upstream: tuple[str, int], family: int) -> None:
        self.address_family = family
        self.upstream = upstream
        self.draining = threading.Event()
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, fmt, *args) -> None:  # quiet: tritonserver logs requests itself
        log.debug("front: " + fmt, *args)

    def _reply(self, code: int, message: str) -> None:
        body = json.dumps({"error": message}).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _check_json(self, path: str, body: bytes) -> str | None:
        """A message if the body should be JSON and is not (None when it is fine or not ours to judge)."""
        if self.command != "POST" or not _INFER_PATHS.match(path) or self.headers.get("Inference-Header-Content-Length"):
            return None
        try:
            doc = json.loads(body.decode("utf-8")) if body else None
        except UnicodeDecodeError:
            return "the request body is not UTF-8 text: send a JSON object"
        except ValueError as e:
            return f"the request body is not valid JSON ({e}): send a JSON object such as " \
                   '{"text_input": "Hello", "max_tokens": 16}'
        if not isinstance(doc, dict):
            return "the request body must be a JSON object, e.g. {\"text_input\": \"Hello\", \"max_tokens\": 16}"
        if "/generate" in path:  # the generate endpoints take our entry models' scalars by name
            for key, value in doc.items():
                want = _FIELD_TYPES.get(key)
                if want is not None and not want[0](value):
                    return f"'{key}' must be {want[1]}, got {json.dumps(value)[:40]}"
        return None

    def _proxy(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._reply(400, "the request body could not be read (bad chunked encoding or length)")
            return
        path = self.path.split("?", 1)[0]
        if self.server.draining.is_set() and _INFER_PATHS.match(path):
            self._reply(503, "the server is shutting down and takes no new requests")
            return
        problem = self._check_json(path, body or b"")
        if problem:
            self._reply(400, problem)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
        headers["Content-Length"] = str(len(body or b""))
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=None)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            self._reply(502, f"tritonserver did not answer: {e}")
            return
        try:
            self.send_response(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            chunked = length is None and self.command != "HEAD" and resp.status not in (204, 304)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                data = resp.read1(65536) if chunked else resp.read(65536)
                if not data:
                    break
                if chunked:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                else:
                    self.wfile.write(data)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:  # the client went away: drop the upstream connection too
            self.close_connection = True
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _proxy


class HttpFront:
    """Listen on (host, port) and forward to tritonserver's HTTP endpoint at ``upstream`` (loopback)."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int]) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self.server = _Server((host, port), _Handler, upstream, family)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="triton-http-front", daemon=True)

    def start(self) -> HttpFront:
        self.thread.start()
        return self

    def drain(self) -> None:
        self.server.draining.set()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
