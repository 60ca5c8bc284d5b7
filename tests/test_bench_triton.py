"""`bench run --backend triton` and its alias `triton load` against one real tritonserver (loopback, CPU, small)."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed (pip install 'sparse_trt[triton]')")

from typer.testing import CliRunner  # noqa: E402

from sparse_trt.bench.results import ResultsFile  # noqa: E402
from sparse_trt.cli.main import app  # noqa: E402
from sparse_trt.serve.triton.errors import TritonNotFoundError  # noqa: E402
from sparse_trt.serve.triton.repo import build_pytorch_repo  # noqa: E402
from sparse_trt.serve.triton.server import TritonServer, find_tritonserver, free_port  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dirs):
    try:
        install = find_tritonserver()
    except TritonNotFoundError as e:
        pytest.skip(f"no tritonserver: {e.message}")
    root = tmp_path_factory.mktemp("bench_triton")
    repo = build_pytorch_repo(tiny_dirs("llama"), root / "repo", device="cpu", max_batch_size=4).path
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    h, g, m = sorted(ports)
    srv = TritonServer([repo], install=install, host="127.0.0.1", http_port=h, grpc_port=g, metrics_port=m,
                       log_file=root / "server.log")
    try:
        srv.start(timeout_s=240)
        yield srv
    finally:
        srv.stop()


def test_bench_run_and_triton_load_alias_agree(server, tiny_dirs, tmp_path):
    n_req, out_len = 8, 12
    run_json, load_json = tmp_path / "run.json", tmp_path / "load.json"
    r = CliRunner().invoke(app, [
        "bench", "run", "ensemble", "-b", "triton", "--device", "cpu", "-o", str(run_json),
        "--opt", f"url={server.grpc_url}", "--opt", "interface=text", "--opt", f"tokenizer={tiny_dirs('llama')}",
        "--input-lens", "8", "--output-lens", str(out_len), "--concurrency", "2", "--requests", str(n_req), "--warmup", "2"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(app, [
        "triton", "load", "--url", server.grpc_url, "--model", "ensemble", "--requests", str(n_req),
        "--concurrency", "2", "--max-tokens", str(out_len), "--warmup", "2", "--json", str(load_json)])
    assert r2.exit_code == 0, r2.output
    a = ResultsFile.load(run_json).runs[0].points[0]
    b = ResultsFile.load(load_json).runs[0].points[0]
    for p in (a, b):  # same generator, same accounting
        assert p.load.mode == "closed-loop" and p.load.concurrency == 2 and p.load.warmup_requests == 2
        assert p.requests == p.sequences == n_req and p.output_tokens == n_req * out_len
        assert p.output_token_throughput == pytest.approx(p.output_tokens / p.window_s)
        assert p.memory is None  # client memory only when asked
        assert p.server_memory is not None and p.server_memory.label == "server"
        assert p.server_memory.peak_bytes and "local server process tree RSS" in p.server_memory.source
    # the two paths measure the same server with the same load; a tiny model's millisecond timings on a busy
    # machine only allow a loose check of the magnitudes
    assert 1 / 3 < a.output_token_throughput / b.output_token_throughput < 3.0
    assert a.itl_s.n == b.itl_s.n == n_req and a.ttft_s.n == b.ttft_s.n == n_req
    assert ResultsFile.load(load_json).runs[0].token_counts.startswith("server")


def test_bench_run_over_http_generate_stream(server, tiny_dirs, tmp_path):
    """protocol=http: the same load generator over Triton's HTTP generate_stream (as HTTP clients such as AIPerf send)."""
    out = tmp_path / "http.json"
    r = CliRunner().invoke(app, [
        "bench", "run", "ensemble", "-b", "triton", "--device", "cpu", "-o", str(out),
        "--opt", "protocol=http", "--opt", f"http_url={server.http_url}", "--opt", "interface=text",
        "--opt", f"tokenizer={tiny_dirs('llama')}", "--input-lens", "8", "--output-lens", "5", "--concurrency", "2",
        "--requests", "4", "--warmup", "2"])
    assert r.exit_code == 0, r.output
    run = ResultsFile.load(out).runs[0]
    p = run.points[0]
    assert p.requests == 4 and p.output_tokens == 20 and p.itl_s.n == 4 and p.ttft_s.p50 > 0
    assert "HTTP generate_stream" in run.token_counts and run.backend_info["protocol"] == "http"
    bad = CliRunner().invoke(app, ["bench", "run", "ensemble", "-b", "triton", "--device", "cpu", "-o", str(tmp_path / "x.json"),
                                   "--opt", "protocol=carrier-pigeon"])
    assert bad.exit_code == 2 and "protocol" in bad.output
