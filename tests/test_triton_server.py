"""Real tritonserver processes on CPU (loopback, free ports, always torn down).

One shared server serves two repositories at once: the PyTorch-backend repository of a tiny LLaMA
(entry ``ensemble``) and a ``tensorrtllm`` repository named ``trt`` whose tensorrt_llm model is swapped
for a Python stand-in (TensorRT-LLM needs a GPU), so our preprocessing/postprocessing models and the
ensemble wiring run for real.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed (pip install 'sparse_trt[triton]')")

from sparse_trt.serve.triton import client as C  # noqa: E402
from sparse_trt.serve.triton import pbtxt  # noqa: E402
from sparse_trt.serve.triton.errors import ModelLoadFailed, TritonNotFoundError  # noqa: E402
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
# prompt's ids, one token per response when streaming, and stops at end_id unless it is -1.
MOCK_TRTLLM = '''
import numpy as np
import triton_python_backend_utils as pb_utils


def _get(r, name, default=None):
    t = pb_utils.get_input_tensor_by_name(r, name)
    return default if t is None else t.as_numpy().reshape(-1)


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            s = r.get_response_sender()
            ids = _get(r, "input_ids")[: int(_get(r, "input_lengths")[0])]
            n = int(_get(r, "request_output_len")[0])
            end = int(_get(r, "end_id", [-1])[0])
            stream = bool(_get(r, "streaming", [False])[0])
            toks = []
            for i in range(n):
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
        return None
'''


def mock_trtllm_repo(root: Path, tokenizer: Path) -> Path:
    eng = root / "engine"
    eng.mkdir(parents=True)
    (eng / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"world_size": 1}},
                                                 "build_config": {"max_batch_size": 8}}))
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


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama):
    install = _install()
    root = tmp_path_factory.mktemp("triton")
    pt = build_pytorch_repo(llama, root / "pt_repo", device="cpu", max_batch_size=4).path
    trt = mock_trtllm_repo(root, llama)
    srv = TritonServer([pt, trt], install=install, log_file=root / "server.log", **_ports())
    try:
        srv.start(timeout_s=240)
        yield srv
    finally:
        srv.stop()
        assert not list(SHM_DIR.glob(f"{srv.shm_prefix}*")), "shared-memory files left behind"


def test_both_repositories_loaded(server):
    assert {"ensemble", "pytorch_llm", "trt", "trt_preprocessing", "trt_tensorrt_llm",
            "trt_postprocessing"} <= set(server.models_ready)


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
    res = C.run_load(server.grpc_url, prompts, C.SamplingParams(max_tokens=10, ignore_eos=True), concurrency=4)
    assert not res.errors, res.errors
    assert [r.prompt for r in res.results] == prompts
    assert all(r.output_tokens == 10 for r in res.results)
    s = res.summary()
    assert s["output_tokens"] == 100 and s["throughput_tok_s"] > 0 and s["ttft_s"]["p50"] > 0
    # greedy: the same prompt gives the same text, whatever runs beside it
    single = C.generate_stream(server.grpc_url, prompts[0], C.SamplingParams(max_tokens=10, ignore_eos=True))
    assert res.results[0].text == res.results[5].text == single.text


def test_bad_request_is_answered_not_fatal(server):
    r = C.generate_stream(server.grpc_url, PROMPT, C.SamplingParams(max_tokens=0))
    assert r.error and "max_tokens" in r.error
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
    cfg = pbtxt.read_config(repo / "pytorch_llm" / "config.pbtxt")
    cfg.parameters["model_dir"].string_value = str(tmp_path / "gone")
    pbtxt.write_config(repo / "pytorch_llm", cfg)
    srv = TritonServer([repo], install=install, **_ports())
    with pytest.raises(ModelLoadFailed) as e:
        srv.start(timeout_s=240)
    assert "pytorch_llm" in e.value.message and "gone" in e.value.message
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
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/pytorch_llm/stats", timeout=1) as r:
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
