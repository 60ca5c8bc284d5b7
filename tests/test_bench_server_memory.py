"""The server's memory for client backends: /metrics GPU memory, a local server's process-tree RSS."""

import http.server
import os
import socket
import threading

from sparse_trt.bench.server_memory import ServerMemoryProbe, listening_pid, metrics_gpu_used, tree_rss

METRICS = b"""# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 1.5e+09
nv_gpu_memory_used_bytes{gpu_uuid="GPU-b"} 500000000
nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 8e+10
"""


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(METRICS)

    def log_message(self, *a):
        pass


def test_metrics_endpoint_gpu_memory():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Metrics)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/metrics"
        assert metrics_gpu_used(url) == 2_000_000_000
        probe = ServerMemoryProbe.for_url("10.0.0.9:8001", {"metrics_url": url})  # remote gRPC, local metrics
        probe.start()
        sm = probe.stop()
        assert sm.label == "server" and sm.peak_bytes == 2_000_000_000 and "nv_gpu_memory_used_bytes" in sm.source
        assert any("remote server" in n for n in sm.notes)
    finally:
        srv.shutdown()
    assert metrics_gpu_used("http://127.0.0.1:1/metrics") is None  # unreachable: None, never an error


def test_local_server_process_tree_rss():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        assert listening_pid(port) == os.getpid()
        rss, n = tree_rss(os.getpid())
        assert rss and rss > 10 * 2**20 and n >= 1
        probe = ServerMemoryProbe.for_url(f"127.0.0.1:{port}", {})
        probe.start()
        sm = probe.stop()
        assert sm.peak_bytes and sm.source.startswith(f"local server process tree RSS (pid {os.getpid()}")
    finally:
        s.close()
    assert ServerMemoryProbe.for_url("example.invalid:8001", {}).stop().peak_bytes is None  # remote, no metrics
