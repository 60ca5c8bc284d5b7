"""Real tritonserver processes on CPU (loopback, free ports, always torn down).

One shared server serves two repositories at once: the PyTorch-backend repository of a tiny LLaMA
(entry ``ensemble``; one slot, and a context of 8192 positions so that a request nobody cancels runs
for long), and a ``tensorrtllm`` repository named ``trt`` whose tensorrt_llm model is swapped
for a Python stand-in (TensorRT-LLM needs a GPU) that behaves as the real backend does where we rely
on it: one response per token when streaming, and a ``stop`` request with a request id cancels that
request (the backend's handleStopRequest). So our preprocessing/postprocessing/BLS models and the
ensemble wiring run for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed (pip install 'sparse_trt[triton]')")

from sparse_trt.serve.triton import client as C  # noqa: E402
from sparse_trt.serve.triton import pbtxt  # noqa: E402
from sparse_trt.serve.triton.errors import ModelLoadFailed, TritonClientError, TritonNotFoundError  # noqa: E402
from sparse_trt.serve.triton.repo import build_pytorch_repo, build_trtllm_repo  # noqa: E402
from sparse_trt.serve.triton.server import SHM_DIR, TritonServer, find_tritonserver, free_port  # noqa: E402

pytestmark = pytest.mark.triton

PROMPT = "the river city music"


def _install():
    try:
        return find_tritonserver()
    except TritonNotFoundError as e:
        pytest.skip(f"no tritonserver: {e.message}")


def _ports() -> dict[str, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    h, g, m = sorted(ports)
    return {"http_port": h, "grpc_port": g, "metrics_port": m}


# A stand-in for the tensorrt_llm model with its inputs/outputs: "generates" by cycling through the
# prompt's ids, one token per response when streaming (a few ms apart), stops at end_id unless it is -1,
# runs one request at a time (one slot), and cancels a request when it gets `stop` with that request's id.
MOCK_TRTLLM = '''
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _get(r, name, default=None):
    t = pb_utils.get_input_tensor_by_name(r, name)
    return default if t is None else t.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        self.slot = threading.Semaphore(1)
        self.stops = {}
        self.lock = threading.Lock()

    def execute(self, requests):
        for r in requests:
            s = r.get_response_sender()
            if bool(_get(r, "stop", [False])[0]):
                with self.lock:
                    ev = self.stops.get(r.request_id())
                if ev is not None:
                    ev.set()
                s.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            ev = threading.Event()
            with self.lock:
                self.stops[r.request_id()] = ev
            threading.Thread(target=self.run, args=(r, s, ev), daemon=True).start()
        return None

    def run(self, r, s, stopped):
        with self.slot:
            ids = _get(r, "input_ids")[: int(_get(r, "input_lengths")[0])]
            n = int(_get(r, "request_output_len")[0])
            end = int(_get(r, "end_id", [-1])[0])
            stream = bool(_get(r, "streaming", [False])[0])
            toks = []
            for i in range(n):
                if stopped.is_set() or s.is_cancelled():
                    break
                time.sleep(0.004)
                tok = int(ids[i % len(ids)])
                toks.append(tok)
                if stream:
                    s.send(pb_utils.InferenceResponse([
                        pb_utils.Tensor("output_ids", np.array([[[tok]]], dtype=np.int32)),
                        pb_utils.Tensor("sequence_length", np.array([[1]], dtype=np.int32))]))
                if tok == end:
                    break
        if stream:
            s.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            s.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("output_ids", np.array([[toks]], dtype=np.int32)),
                pb_utils.Tensor("sequence_length", np.array([[len(toks)]], dtype=np.int32))]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def mock_trtllm_repo(root: Path, tokenizer: Path) -> Path:
    eng = root / "engine"
    eng.mkdir(parents=True)
    (eng / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"world_size": 1}},
                                                 "build_config": {"max_batch_size": 8, "max_seq_len": 8192,
                                                                  "max_input_len": 256}}))
    (eng / "rank0.engine").write_bytes(b"\0")
    res = build_trtllm_repo(eng, tokenizer, root / "trt_repo", name="trt", max_batch_size=4)
    d = res.path / "trt_tensorrt_llm"
    cfg = pbtxt.read_config(d / "config.pbtxt")
    cfg.backend = "python"
    cfg.parameters.clear()
    for t in cfg.input:
        t.allow_ragged_batch = False
    pbtxt.write_config(d, cfg)
    (d / "1" / "model.py").write_text(MOCK_TRTLLM)
    return res.path


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> Path:
    return tiny_dirs("llama")


@pytest.fixture(scope="module")
def reference(llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    model = AutoModelForCausalLM.from_pretrained(llama).eval()

    def greedy(prompt: str, n: int) -> list[int]:
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
        return out[0, enc["input_ids"].shape[1]:].tolist()

    return tok, greedy


def long_context_copy(model_dir: Path, dst: Path, positions: int = 8192) -> Path:
    """The same tiny model with room for long generations (so a request that is not cancelled runs for long)."""
    shutil.copytree(model_dir, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = positions
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama):
    install = _install()
    root = tmp_path_factory.mktemp("triton")
    # one slot: a cancelled request must free it for the next one (long context: same weights, same outputs)
    pt = build_pytorch_repo(long_context_copy(llama, root / "long"), root / "pt_repo", device="cpu",
                            max_batch_size=1).path
    trt = mock_trtllm_repo(root, llama)
    srv = TritonServer([pt, trt], install=install, log_file=root / "server.log", **_ports())
    try:
        srv.start(timeout_s=240)
        yield srv
    finally:
        srv.stop()
        assert not list(SHM_DIR.glob(f"{srv.shm_prefix}*")), "shared-memory files left behind"


def test_all_repositories_loaded(server):
    assert {"ensemble", "trt", "trt_preprocessing", "trt_tensorrt_llm", "trt_postprocessing",
            "trt_tensorrt_llm_bls"} <= set(server.models_ready)


def test_stream_matches_generate_token_for_token(server, reference):
    tok, greedy = reference
    n = 24
    ids = greedy(PROMPT, n)
    r = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=n))
    assert r.ok, r.error
    assert r.output_tokens == len(ids)  # one response per generated token
    # each response holds exactly the text its token added (held back only inside a UTF-8 character)
    expected, shown = [], ""
    for i in range(len(ids)):
        full = tok.decode(ids[: i + 1], skip_special_tokens=True)
        if full.endswith("\ufffd") and i < len(ids) - 1:
            expected.append("")
            continue
        expected.append(full[len(shown):])
        shown = full
    assert r.pieces == expected
    assert r.text == tok.decode(ids, skip_special_tokens=True)
    assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s
    assert all(x >= 0 for x in r.itl_s)


def test_non_streaming_grpc_and_http(server, reference):
    tok, greedy = reference
    text = tok.decode(greedy(PROMPT, 12), skip_special_tokens=True)
    r = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=12), stream=False)
    assert r.ok and r.text == text and r.output_tokens == 1
    body = C.http_generate(server.http_url, PROMPT, C.SamplingParams(max_tokens=12))
    assert body["text_output"] == text
    events = list(C.http_generate_stream(server.http_url, PROMPT, C.SamplingParams(max_tokens=12)))
    assert "".join(e["text_output"] for e in events) == text
    assert len(events) == 12


def test_concurrent_streams(server, reference):
    tok, greedy = reference
    prompts = ["the king", "north south east", "a song of the ocean", "tensor engine kernel", "war and peace"] * 2
    params = C.SamplingParams(max_tokens=10, ignore_eos=True)
    with ThreadPoolExecutor(4) as pool:  # four streams in flight at once
        results = list(pool.map(lambda p: C.generate_stream(server.grpc_url, p, params), prompts))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert all(r.output_tokens == 10 and r.ttft_s > 0 for r in results)
    # greedy: the same prompt gives the same text, whatever ran before it
    single = C.generate_stream(server.grpc_url, prompts[0], params)
    assert results[0].text == results[5].text == single.text


def test_bad_request_is_answered_not_fatal(server):
    status, text = _post(server, "ensemble", {"text_input": PROMPT, "max_tokens": 0})
    assert status == 400 and "max_tokens must be at least 1" in text
    assert C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=2)).ok


def test_trtllm_ensemble_wiring_runs(server, llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama)
    ids = tok.encode(PROMPT)
    n = 7
    expect_ids = [ids[i % len(ids)] for i in range(n)]
    whole = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=n, ignore_eos=True), model="trt",
                              stream=False)
    assert whole.ok, whole.error
    streamed = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=n, ignore_eos=True), model="trt")
    assert streamed.ok and streamed.output_tokens == n
    assert streamed.text == whole.text
    assert whole.text.strip() == tok.decode(expect_ids, skip_special_tokens=True).strip()
    body = C.http_generate(server.http_url, PROMPT, C.SamplingParams(max_tokens=n, ignore_eos=True), model="trt")
    assert body["text_output"] == whole.text


def test_model_that_fails_to_load_reports_reason(tmp_path, llama):
    install = _install()
    repo = build_pytorch_repo(llama, tmp_path / "repo", device="cpu").path
    cfg = pbtxt.read_config(repo / "ensemble" / "config.pbtxt")
    cfg.parameters["model_dir"].string_value = str(tmp_path / "gone")
    pbtxt.write_config(repo / "ensemble", cfg)
    srv = TritonServer([repo], install=install, **_ports())
    with pytest.raises(ModelLoadFailed) as e:
        srv.start(timeout_s=240)
    assert "ensemble" in e.value.message and "gone" in e.value.message
    assert srv.proc is not None and srv.proc.poll() is not None
    assert not list(SHM_DIR.glob(f"{srv.shm_prefix}*"))


def test_sigterm_drains_in_flight_streams(tmp_path, llama):
    install = _install()
    repo = build_pytorch_repo(llama, tmp_path / "repo", device="cpu").path
    srv = TritonServer([repo], install=install, exit_timeout_s=30, **_ports())
    n = 200  # the tiny model has 256 positions
    try:
        srv.start(timeout_s=240)
        results: dict[str, C.StreamResult] = {}
        th = threading.Thread(target=lambda: results.setdefault("r", C.generate_stream(
            srv.grpc_url, PROMPT, C.SamplingParams(max_tokens=n, ignore_eos=True))))
        th.start()
        deadline = time.monotonic() + 60
        while not _has_started(srv) and time.monotonic() < deadline:
            time.sleep(0.02)
        t_sig = time.perf_counter()
        srv.signal(signal.SIGTERM)
        # while it drains, new requests are refused (HTTP by our front: 503; gRPC by the server or the model)
        status, body = _post(srv, "ensemble", {"text_input": PROMPT, "max_tokens": 2})
        assert status == 503 and "shutting down" in body
        late = C.generate_stream(srv.grpc_url, PROMPT, C.SamplingParams(max_tokens=2), timeout_s=30)
        assert not late.ok and late.output_tokens == 0
        th.join(120)
        code = srv.wait(60)
        r = results["r"]
        assert r.ok, r.error
        assert r.output_tokens == n, "the in-flight stream was cut short"
        assert r.token_times[-1] > t_sig, "SIGTERM arrived after the stream had finished: nothing was drained"
        assert code == 0
    finally:
        srv.stop()
    assert not list(SHM_DIR.glob(f"{srv.shm_prefix}*"))


def _has_started(srv: TritonServer) -> bool:
    """True once the pytorch model reports generation activity (the request is in flight)."""
    try:
        with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/ensemble/stats", timeout=1) as r:
            stats = json.loads(r.read())
        return any(m.get("execution_count", 0) > 0 for m in stats.get("model_stats", []))
    except Exception:  # noqa: BLE001
        return False


def test_bench_triton_backend_text_interface(server, llama):
    """The benchmark's triton backend drives both models on the one server through our text interface."""
    bench = pytest.importorskip("sparse_trt.bench.backends", reason="bench package not present")
    import torch

    for model in ("ensemble", "trt"):
        spec = bench.BackendSpec(model=model, device=torch.device("cpu"),
                                 options={"url": server.grpc_url, "interface": "text", "tokenizer": str(llama)})
        b = bench.create_backend("triton", spec)
        try:
            b.load()
            assert b.vocab_size() > 100
            timings = b.generate(bench.GenerationRequest(prompts=[[40, 41, 42, 43], [50, 51, 52]], max_new_tokens=6))
            assert [t.output_tokens for t in timings] == [6, 6]
            assert all(t.start <= t.first_token <= t.end and len(t.token_times) == 6 for t in timings)
        finally:
            b.close()


def test_bench_compare_two_models_one_server(server, llama, tmp_path):
    """`sparse-trt bench compare` over the wire: two models on one server through the triton backend."""
    pytest.importorskip("sparse_trt.cli.bench", reason="bench CLI not present")
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    out = tmp_path / "cmp.json"
    r = CliRunner().invoke(app, [
        "bench", "compare", "ensemble", "trt", "-b", "triton", "--device", "cpu", "-o", str(out),
        "--opt", f"url={server.grpc_url}", "--opt", "interface=text", "--opt", f"tokenizer={llama}",
        "--input-lens", "8", "--output-lens", "4", "--warmup", "1", "--iters", "2",
    ])
    assert r.exit_code == 0, r.output
    assert out.is_file() and json.loads(out.read_text())


# ------------------------------------------------------------------------------ hostile and cancelling clients
def _post(srv: TritonServer, model: str, body, endpoint: str = "generate") -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{srv.http_url}/v2/models/{model}/{endpoint}", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_malformed_and_empty_requests_get_400(server):
    for model in ("ensemble", "trt", "trt_tensorrt_llm_bls"):
        for body in (b'{"text_input": "x", "max_tokens": 4', b"not json", b"[1, 2]"):
            status, text = _post(server, model, body)
            assert status == 400, (model, body, status, text)
            assert "JSON" in text
        status, text = _post(server, model, {"text_input": "x", "max_tokens": "abc"})
        assert status == 400 and "max_tokens" in text and "whole number" in text
        status, text = _post(server, model, {"text_input": "", "max_tokens": 4})
        assert status == 400 and "text_input is empty" in text, (model, text)
    status, text = _post(server, "ensemble", b"{}", "generate_stream")
    assert status == 400  # required inputs missing: Triton's own 400
    assert _post(server, "ensemble", {"text_input": PROMPT, "max_tokens": 2})[0] == 200  # still serving


def test_wrapped_or_oversized_max_tokens_refused(server):
    # 4294967297 wraps to 1 in int32 and 99999999999 to 1215752191: the entry models take INT64 and refuse both
    for model, room in (("ensemble", "8192 positions"), ("trt", "max_seq_len 8192"),
                        ("trt_tensorrt_llm_bls", "max_seq_len 8192")):
        for n in (4294967297, 99999999999, 10**6):
            for endpoint in ("generate", "generate_stream"):
                status, text = _post(server, model, {"text_input": PROMPT, "max_tokens": n}, endpoint)
                assert status == 400, (model, n, endpoint, status, text)
                assert f"max_tokens {n} exceeds the room left" in text and room in text
        status, text = _post(server, model, {"text_input": PROMPT, "max_tokens": 0})
        assert status == 400 and "at least 1" in text
    # the client: an out-of-range value never leaves it; an in-range one the model cannot take gets a clear error
    with pytest.raises(C.RequestInputError):
        C.SamplingParams(max_tokens=4294967297)
    r = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=9000))
    assert not r.ok and "max_tokens 9000 exceeds the room left" in r.error and "ask for at most" in r.error
    with pytest.raises(TritonClientError, match="HTTP 400.*max_tokens 9000 exceeds the room left"):
        C.http_generate(server.http_url, PROMPT, C.SamplingParams(max_tokens=9000))


def _next_request_starts_fast(server, model: str) -> float:
    r = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=2, ignore_eos=True), model=model,
                          timeout_s=60)
    assert r.ok, r.error
    return r.ttft_s


@pytest.mark.parametrize("model", ["ensemble", "trt_tensorrt_llm_bls"])
def test_cancel_through_the_entry_model_frees_its_slot(server, model):
    """A request cancelled mid-stream (gRPC cancel) stops at the next token: the next request on the one-slot
    model starts within a second. (Not cancelled, the first would run for more than 30 s: 8000 tokens.)"""
    params = C.SamplingParams(max_tokens=8000, ignore_eos=True)
    stream = C._Stream(server.grpc_url, timeout_s=120)
    flowing = threading.Event()
    res: dict[str, C.StreamResult] = {}

    def on_piece(_text, _t):
        if len(res.setdefault("pieces", [])) >= 2:
            flowing.set()
        res["pieces"].append(_text)

    th = threading.Thread(target=lambda: res.setdefault("r", stream.run(model, PROMPT, params, on_piece=on_piece)))
    th.start()
    assert flowing.wait(60), "the request did not start streaming"
    stream.cancel()
    th.join(10)
    assert not th.is_alive(), "the client did not return after cancelling"
    assert not res["r"].ok and 3 <= res["r"].output_tokens < 8000
    assert _next_request_starts_fast(server, model) < 1.0


def test_client_timeout_cancels_on_the_server(server):
    """The client's timeout cancels the request on the server and returns at once (it used to wait for the end)."""
    t0 = time.perf_counter()
    r = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=8000, ignore_eos=True), timeout_s=2)
    assert time.perf_counter() - t0 < 6, "the client did not return when its timeout cancelled the request"
    assert not r.ok and "request cancelled" in r.error
    assert _next_request_starts_fast(server, "ensemble") < 1.0


def test_killed_client_frees_the_slot(server):
    """A client process killed with SIGKILL mid-stream: the server notices the dropped stream and stops."""
    code = (
        "import sys; from sparse_trt.serve.triton import client as C\n"
        "C.generate_stream(sys.argv[1], 'the river', C.SamplingParams(max_tokens=8000, ignore_eos=True), "
        "on_piece=lambda p, t: print('token', flush=True))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, server.grpc_url], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert p.stdout.readline().strip() == "token"
    finally:
        p.kill()
        p.wait()
    time.sleep(0.3)  # the server sees the closed connection
    assert _next_request_starts_fast(server, "ensemble") < 1.0


def test_http_client_that_disconnects_frees_the_slot(server):
    """An HTTP generate_stream client that drops its connection (through our front): generation stops."""
    import socket

    host, port = server.http_url.rsplit(":", 1)
    body = json.dumps({"text_input": PROMPT, "max_tokens": 8000, "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(b"POST /v2/models/ensemble/generate_stream HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        got = b""
        while got.count(b"data:") < 3:
            chunk = s.recv(4096)
            assert chunk, "the stream ended early"
            got += chunk
    time.sleep(0.5)  # the front notices at its next write, then Triton at the closed upstream connection
    # a few hops more than gRPC (front write fails -> upstream closed -> Triton cancels): allow a little longer,
    # still far below the >30 s the uncancelled request would hold the slot
    assert _next_request_starts_fast(server, "ensemble") < 3.0


def test_bls_entry_gives_the_ensembles_text(server):
    for stream in (False, True):
        params = C.SamplingParams(max_tokens=7, ignore_eos=True)
        a = C.generate_stream(server.grpc_url, PROMPT, params, model="trt", stream=stream)
        b = C.generate_stream(server.grpc_url, PROMPT, params, model="trt_tensorrt_llm_bls", stream=stream)
        assert a.ok and b.ok, (a.error, b.error)
        assert a.text == b.text
        assert b.output_tokens == (7 if stream else 1)


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if int(rest[1]) == pid:
                out.append((int(d.name), comm))
    return out


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"  # a zombie holds no ports


def test_kill_9_of_serve_leaves_no_server(tmp_path, llama):
    """`sparse-trt triton serve` killed with SIGKILL in the middle of a long generation: its tritonserver is killed
    with it, the model stub (which would keep generating) exits within a second, the ports are free."""
    _install()
    repo = build_pytorch_repo(long_context_copy(llama, tmp_path / "long"), tmp_path / "repo", device="cpu").path
    ports = _ports()
    cmd = [sys.executable, "-c", "from sparse_trt.cli.main import app; app()", "triton", "serve", str(repo),
           "--http-port", str(ports["http_port"]), "--grpc-port", str(ports["grpc_port"]),
           "--metrics-port", str(ports["metrics_port"]), "--exit-timeout", "5"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"NO_COLOR": "1"})
    server_pid = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['http_port']}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        assert p.poll() is None, "serve exited during start-up"
        servers = [pid for pid, comm in _children(p.pid) if comm.startswith("tritonserver")]
        assert len(servers) == 1, _children(p.pid)
        server_pid = servers[0]
        stubs = [pid for pid, _ in _children(server_pid)]
        assert stubs, "no Python-backend stub under the server"
        streamed = threading.Event()
        client = threading.Thread(target=C.generate_stream, daemon=True, kwargs={
            "url": f"127.0.0.1:{ports['grpc_port']}", "prompt": PROMPT, "timeout_s": 60,
            "params": C.SamplingParams(max_tokens=8000, ignore_eos=True), "on_piece": lambda *_: streamed.set()})
        client.start()
        assert streamed.wait(60), "the long request did not start"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(_gone(x) for x in [server_pid, *stubs]):
            time.sleep(0.2)
        assert all(_gone(x) for x in [server_pid, *stubs]), "tritonserver outlived its parent"
        from sparse_trt.serve.triton.server import port_free

        assert all(port_free("127.0.0.1", v) for v in ports.values())
    finally:
        if p.poll() is None:
            p.kill()
        if server_pid is not None and not _gone(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def test_cli_generate_streams_and_reports_ttft(server, reference):
    """`triton generate` prints the completion (as it streams) and TTFT, over gRPC and over HTTP."""
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    tok, greedy = reference
    text = tok.decode(greedy(PROMPT, 6), skip_special_tokens=True)
    runner = CliRunner()
    for extra in ([], ["--http", "--url", server.http_url], ["--no-stream"]):
        args = ["triton", "generate", PROMPT, "--max-tokens", "6"] + (extra if "--url" in extra else
                                                                      extra + ["--url", server.grpc_url])
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert text.strip() in r.output and "TTFT" in r.output and "TTFT -" not in r.output, (extra, r.output)
    r = runner.invoke(app, ["triton", "generate", PROMPT, "--max-tokens", "9000", "--url", server.grpc_url])
    assert r.exit_code == 9 and "exceeds the room left" in " ".join(r.output.split())
