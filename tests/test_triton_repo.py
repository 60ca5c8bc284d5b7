"""Offline tests of Triton repository generation and checking (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed (pip install 'sparse_trt[triton]')")

from sparse_trt.cli.main import app  # noqa: E402
from sparse_trt.core.errors import InputError  # noqa: E402
from sparse_trt.serve.triton import pbtxt  # noqa: E402
from sparse_trt.serve.triton.check import check_repo  # noqa: E402
from sparse_trt.serve.triton.errors import (  # noqa: E402
    EngineDirError,
    TokenizerError,
    TritonNotFoundError,
    TritonRepoError,
)
from sparse_trt.serve.triton.names import validate_model_name  # noqa: E402
from sparse_trt.serve.triton.repo import build_pytorch_repo, build_trtllm_repo  # noqa: E402
from sparse_trt.serve.triton.server import PortInUseError, TritonServer, find_tritonserver  # noqa: E402


def flat(text: str) -> str:
    """CLI output without rich's line wrapping."""
    return " ".join(text.split())


def fake_engine(d: Path, world: int = 1, max_batch_size: int = 16) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({
        "version": "1.2.0",
        "pretrained_config": {"architecture": "LlamaForCausalLM", "dtype": "float16",
                              "mapping": {"world_size": world, "tp_size": world, "pp_size": 1}},
        "build_config": {"max_batch_size": max_batch_size, "max_input_len": 256, "max_seq_len": 512},
    }))
    for r in range(world):
        (d / f"rank{r}.engine").write_bytes(b"\0engine")
    return d


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> Path:
    return tiny_dirs("llama")


def test_trtllm_repo_is_valid_protobuf_and_wired(tmp_path, llama):
    eng = fake_engine(tmp_path / "engine")
    res = build_trtllm_repo(eng, llama, tmp_path / "repo", max_batch_size=4, kv_cache_free_gpu_mem_fraction=0.8)
    assert res.entry == "ensemble" and res.cancellable == "tensorrt_llm_bls"
    assert set(res.models) == {"ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls"}
    rep = check_repo(res.path)
    assert rep.ok, rep.problems
    assert rep.entry_points() == ["ensemble", "tensorrt_llm_bls"]
    assert any("does not stop generating" in n and "tensorrt_llm_bls" in n for n in res.notes)
    llm = pbtxt.read_config(res.path / "tensorrt_llm" / "config.pbtxt")
    assert llm.backend == "tensorrtllm" and llm.model_transaction_policy.decoupled
    assert llm.parameters["gpt_model_path"].string_value == str(eng.absolute())
    assert llm.parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.8"
    assert llm.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    # as in the TensorRT-LLM backend's template (and src/utils.h): the seed input is `seed`, scalars reshape to []
    ins = {t.name: t for t in llm.input}
    assert "seed" in ins and "random_seed" not in ins and "stop" in ins
    for name in ("input_lengths", "request_output_len", "end_id", "pad_id", "streaming", "stop", "temperature",
                 "runtime_top_k", "runtime_top_p", "seed"):
        assert ins[name].HasField("reshape") and list(ins[name].reshape.shape) == [], name
    assert not ins["input_ids"].HasField("reshape")
    text = pbtxt.to_text(llm)
    assert 'name: "request_output_len"' in text and "reshape {\n" in text
    # the client-facing max_tokens is INT64 (no int32 wrap) and is checked against the engine's max_seq_len
    ens = pbtxt.read_config(res.path / "ensemble" / "config.pbtxt")
    assert next(t for t in ens.input if t.name == "max_tokens").data_type == pbtxt.data_type("INT64")
    llm_step = next(s for s in ens.ensemble_scheduling.step if s.model_name == "tensorrt_llm")
    assert llm_step.input_map["seed"] == "random_seed" and llm_step.input_map["request_output_len"] == "_OUTPUT_LEN"
    pre = pbtxt.read_config(res.path / "preprocessing" / "config.pbtxt")
    assert pre.parameters["max_seq_len"].string_value == "512" and pre.parameters["max_input_len"].string_value == "256"
    bls = pbtxt.read_config(res.path / "tensorrt_llm_bls" / "config.pbtxt")
    assert bls.backend == "python" and bls.model_transaction_policy.decoupled
    assert bls.parameters["tensorrt_llm_model_name"].string_value == "tensorrt_llm"
    assert bls.parameters["max_seq_len"].string_value == "512"
    assert (res.path / "tensorrt_llm_bls" / "1" / "model.py").is_file()
    for m in ("preprocessing", "postprocessing"):
        assert (res.path / m / "1" / "model.py").is_file()
        cfg = pbtxt.read_config(res.path / m / "config.pbtxt")
        assert cfg.parameters["tokenizer_dir"].string_value == str(llama.absolute())
    text = (res.path / "ensemble" / "config.pbtxt").read_text()
    assert "${" not in text and 'platform: "ensemble"' in text


def test_trtllm_repo_options_and_name_prefix(tmp_path, llama):
    eng = fake_engine(tmp_path / "engine")
    res = build_trtllm_repo(eng, llama, tmp_path / "repo", name="sparse", decoupled=False, instances=2)
    assert res.models == ["sparse", "sparse_preprocessing", "sparse_tensorrt_llm", "sparse_postprocessing",
                          "sparse_tensorrt_llm_bls"]
    assert res.cancellable == "sparse_tensorrt_llm_bls"
    assert check_repo(res.path).ok
    llm = pbtxt.read_config(res.path / "sparse_tensorrt_llm" / "config.pbtxt")
    assert not llm.model_transaction_policy.decoupled
    assert llm.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    bls = pbtxt.read_config(res.path / "sparse_tensorrt_llm_bls" / "config.pbtxt")
    assert bls.parameters["tensorrt_llm_model_name"].string_value == "sparse_tensorrt_llm"
    assert bls.parameters["decoupled_llm"].string_value == "false"
    assert pbtxt.read_config(res.path / "sparse_preprocessing" / "config.pbtxt").instance_group[0].count == 2
    assert any("decoupled" in n for n in res.notes)


def test_pytorch_repo(tmp_path, llama):
    """One decoupled Python model is the entry itself (cancellation is not forwarded through ensembles)."""
    res = build_pytorch_repo(llama, tmp_path / "repo", device="cpu", max_batch_size=3, instances=2)
    rep = check_repo(res.path)
    assert rep.ok, rep.problems
    assert res.models == ["ensemble"] and res.entry == res.cancellable == "ensemble"
    cfg = pbtxt.read_config(res.path / "ensemble" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled and not cfg.platform
    assert cfg.parameters["model_dir"].string_value == str(llama.absolute())
    assert cfg.parameters["device"].string_value == "cpu"
    assert cfg.parameters["max_concurrency"].string_value == "3"
    assert cfg.parameters["intra_op_threads"].string_value == "auto"
    assert cfg.instance_group[0].count == 2
    assert next(t for t in cfg.input if t.name == "max_tokens").data_type == pbtxt.data_type("INT64")
    assert (res.path / "ensemble" / "1" / "model.py").is_file()
    named = build_pytorch_repo(llama, tmp_path / "named", name="dense", threads=3)
    assert named.models == ["dense"]
    assert pbtxt.read_config(named.path / "dense" / "config.pbtxt").parameters["intra_op_threads"].string_value == "3"


def test_threads_setting_and_resolution():
    import importlib.util
    import sys
    import types

    from sparse_trt.serve.triton.repo import _PY_MODELS, threads_setting

    assert threads_setting("auto") == "auto" and threads_setting(None) == "auto" and threads_setting(4) == "4"
    for bad in ("0", "-2", "many"):
        with pytest.raises(TritonRepoError, match="--threads"):
            threads_setting(bad)
    # the model's own resolution (run with a stand-in for Triton's utils module, which only the server has)
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("_pytorch_llm_model", _PY_MODELS / "pytorch_llm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.resolve_threads("auto", 1, cores=8) == 8
    assert mod.resolve_threads("auto", 3, cores=8) == 2
    assert mod.resolve_threads("auto", 16, cores=2) == 1
    assert mod.resolve_threads("5", 2, cores=2) == 5
    with pytest.raises(ValueError):
        mod.resolve_threads("0", 1, cores=2)
    assert mod.check_max_tokens(10, 6, 256) == 10
    with pytest.raises(mod.BadRequest, match="room left.*256 positions - 6 prompt tokens = 250"):
        mod.check_max_tokens(4294967297, 6, 256)
    with pytest.raises(mod.BadRequest, match="at least 1"):
        mod.check_max_tokens(0, 6, 256)
    with pytest.raises(mod.BadRequest, match="fills the model's context"):
        mod.check_max_tokens(1, 256, 256)


def test_check_rejects_unknown_fields_and_placeholders(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo")
    p = res.path / "ensemble" / "config.pbtxt"
    p.write_text(p.read_text() + '\nbogus_field: 3\n')
    rep = check_repo(res.path)
    assert not rep.ok and any("bogus_field" in x for x in rep.problems)
    p.write_text(p.read_text().replace("bogus_field: 3", 'parameters { key: "x" value { string_value: "${engine_dir}" } }'))
    rep = check_repo(res.path)
    assert any("${engine_dir}" in x for x in rep.problems)


def test_check_finds_wiring_errors(tmp_path, llama):
    eng = fake_engine(tmp_path / "engine")
    res = build_trtllm_repo(eng, llama, tmp_path / "repo")
    ens_path = res.path / "ensemble" / "config.pbtxt"
    ens = pbtxt.read_config(ens_path)
    ens.ensemble_scheduling.step[1].input_map["request_output_len"] = "text_input"  # STRING into INT32
    del ens.ensemble_scheduling.step[1].input_map["input_lengths"]  # a required input left unfed
    ens.ensemble_scheduling.step[2].model_name = "detok"  # a model that is not there
    pbtxt.write_config(ens_path.parent, ens)
    probs = "\n".join(check_repo(res.path).problems)
    assert "request_output_len" in probs and "TYPE_STRING" in probs
    assert "required input 'input_lengths'" in probs
    assert "'detok' is not in the repository" in probs
    assert "text_output" in probs  # nothing produces the ensemble output any more
    bls_path = res.path / "tensorrt_llm_bls"
    bls = pbtxt.read_config(bls_path / "config.pbtxt")
    bls.parameters["tensorrt_llm_model_name"].string_value = "gone"
    pbtxt.write_config(bls_path, bls)
    assert any("tensorrt_llm_model_name 'gone'" in p for p in check_repo(res.path).problems)


def test_check_model_folder_problems(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo")
    (res.path / "ensemble" / "1" / "model.py").unlink()
    cfg = pbtxt.read_config(res.path / "ensemble" / "config.pbtxt")
    cfg.name = "other"
    pbtxt.write_config(res.path / "ensemble", cfg)
    probs = "\n".join(check_repo(res.path).problems)
    assert "model.py" in probs and "differs from its folder name" in probs
    with pytest.raises(TritonRepoError, match="no model folders"):
        check_repo(tmp_path)
    with pytest.raises(TritonRepoError, match="does not exist"):
        check_repo(tmp_path / "nope")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a b", "x" * 80, "ok..no"])
def test_bad_names(bad):
    with pytest.raises(TritonRepoError, match="not a valid Triton model name"):
        validate_model_name(bad)


def test_good_names():
    for ok in ("ensemble", "llama-2of4", "m.v2", "A_1"):
        assert validate_model_name(ok) == ok


def test_engine_dir_errors(tmp_path, llama):
    with pytest.raises(EngineDirError, match="does not exist"):
        build_trtllm_repo(tmp_path / "none", llama, tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineDirError, match="no config.json"):
        build_trtllm_repo(tmp_path / "empty", llama, tmp_path / "r")
    with pytest.raises(EngineDirError, match="Hugging Face model folder"):
        build_trtllm_repo(llama, llama, tmp_path / "r")
    eng = fake_engine(tmp_path / "tp2", world=2)
    (eng / "rank1.engine").unlink()
    with pytest.raises(EngineDirError, match="rank1.engine"):
        build_trtllm_repo(eng, llama, tmp_path / "r")
    eng = fake_engine(tmp_path / "small", max_batch_size=2)
    with pytest.raises(TritonRepoError, match="exceeds the engine's max_batch_size 2"):
        build_trtllm_repo(eng, llama, tmp_path / "r", max_batch_size=8)
    assert not (tmp_path / "r").exists()


def test_tokenizer_errors_leave_nothing(tmp_path):
    eng = fake_engine(tmp_path / "engine")
    with pytest.raises(TokenizerError, match="required"):
        build_trtllm_repo(eng, None, tmp_path / "r")
    with pytest.raises(TokenizerError, match="does not exist"):
        build_trtllm_repo(eng, tmp_path / "nope", tmp_path / "r")
    (tmp_path / "notok").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        build_trtllm_repo(eng, tmp_path / "notok", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]


def test_repo_exists_and_overwrite(tmp_path, llama):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TritonRepoError, match="already exists"):
        build_pytorch_repo(llama, out)
    assert (out / "keep.txt").exists()
    with pytest.raises(InputError, match="not written by sparse-trt"):  # a folder of someone else's stays
        build_pytorch_repo(llama, out, overwrite=True)
    assert (out / "keep.txt").exists()
    mine = build_pytorch_repo(llama, tmp_path / "mine").path
    (mine / "keep.txt").write_text("x")
    build_pytorch_repo(llama, mine, overwrite=True)
    assert not (mine / "keep.txt").exists() and check_repo(mine).ok


def test_pytorch_option_errors(tmp_path, llama):
    with pytest.raises(TritonRepoError, match="needs a CUDA device"):
        build_pytorch_repo(llama, tmp_path / "r", device="cpu", sparse_kernels=True)
    with pytest.raises(TritonRepoError, match="not understood"):
        build_pytorch_repo(llama, tmp_path / "r", device="tpu")
    with pytest.raises(TritonRepoError, match="--max-batch-size"):
        build_pytorch_repo(llama, tmp_path / "r", max_batch_size=0)
    assert not (tmp_path / "r").exists()


def test_cli_repo_check_and_errors(tmp_path, llama):
    runner = CliRunner()
    out = tmp_path / "repo"
    r = runner.invoke(app, ["triton", "repo", str(llama), "-o", str(out), "--backend", "pytorch", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["triton", "check", str(out)])
    assert r.exit_code == 0 and "OK" in flat(r.output)
    r = runner.invoke(app, ["triton", "repo", str(llama), "-o", str(tmp_path / "x"), "--backend", "onnx"])
    assert r.exit_code == 2 and "not known" in flat(r.output)
    r = runner.invoke(app, ["triton", "repo", str(tmp_path / "missing"), "--tokenizer", str(llama), "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "does not exist" in flat(r.output)
    (out / "ensemble" / "config.pbtxt").write_text("name: 'ensemble'\nnot_a_field: 1\n")
    r = runner.invoke(app, ["triton", "check", str(out)])
    assert r.exit_code == 2 and "not_a_field" in flat(r.output)


def test_tritonserver_not_found_says_how(tmp_path, monkeypatch):
    with pytest.raises(TritonNotFoundError, match="does not exist") as e:
        find_tritonserver(tmp_path / "nope")
    assert "nvidia-pytriton" in (e.value.fix or "")
    monkeypatch.setenv("SPARSE_TRT_TRITONSERVER", str(tmp_path / "nope"))
    with pytest.raises(TritonNotFoundError):
        find_tritonserver()


def test_busy_port_is_reported_before_start(tmp_path, llama):
    import socket

    res = build_pytorch_repo(llama, tmp_path / "repo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        srv = TritonServer([res.path], http_port=port, grpc_port=port + 1 if port < 65000 else port - 1,
                           metrics_port=port + 2 if port < 65000 else port - 2)
        with pytest.raises(PortInUseError, match=f"HTTP {port}"):
            srv.start()
        r = CliRunner().invoke(app, ["triton", "serve", str(res.path), "--http-port", str(port)])
        assert r.exit_code == 8 and "already in use" in flat(r.output)


def test_malformed_repo_refused_before_start(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo")
    (res.path / "ensemble" / "config.pbtxt").write_text('name: "ensemble"\nbackend: "python"\nwhat: 1\n')
    with pytest.raises(TritonRepoError, match="has problems"):
        TritonServer([res.path]).start()


def test_busy_port_names_its_holder_and_stale_servers(tmp_path):
    """A busy port is reported with the PID holding it, and a tritonserver of a dead sparse-trt as stale."""
    import subprocess
    import sys
    import time

    from sparse_trt.serve.triton.server import describe_holder, free_port, port_holder

    port = free_port()
    dead = 2**22 + 12345  # no such process (above the default pid_max)
    code = ("import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(1); "
            "print('up', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(port),
                          f"--backend-config=python,shm-region-prefix-name=sparse_trt_pb_{dead}_abcd_"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while port_holder(port) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_holder(port) == p.pid
        text = describe_holder(p.pid)
        assert f"pid {p.pid}" in text and "stale" in text and f"pid {dead}" in text and f"kill {p.pid}" in text
        srv = TritonServer([tmp_path], http_port=port, grpc_port=free_port(), metrics_port=free_port(), check=False)
        tmp_path.mkdir(exist_ok=True)
        with pytest.raises(PortInUseError, match=f"HTTP {port} \\(held by pid {p.pid}"):
            srv.start()
    finally:
        p.kill()
        p.wait()


def test_serve_option_errors_exit_2(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo")
    runner = CliRunner()
    r = runner.invoke(app, ["triton", "serve", str(res.path), "--http-port", "70000"])
    assert r.exit_code == 2 and "70000" in flat(r.output) and "Traceback" not in r.output
    r = runner.invoke(app, ["triton", "serve", str(res.path), "--host", "not-a-host"])
    assert r.exit_code == 2 and "not-a-host" in flat(r.output) and "resolve" in flat(r.output)
    assert "in use" not in flat(r.output)
    r = runner.invoke(app, ["triton", "serve", str(res.path), "--http-port", "9000", "--grpc-port", "9000"])
    assert r.exit_code == 2 and "must differ" in flat(r.output)


def test_client_refuses_out_of_range_values_before_sending():
    from sparse_trt.serve.triton.client import SamplingParams
    from sparse_trt.serve.triton.errors import RequestInputError

    for bad in (0, -1, 4294967297, 99999999999, 2**31, 1.5, True):
        with pytest.raises(RequestInputError, match="max_tokens"):
            SamplingParams(max_tokens=bad)
    assert SamplingParams(max_tokens=2**31 - 1).as_inputs()["max_tokens"] == 2**31 - 1
    with pytest.raises(RequestInputError, match="top_p"):
        SamplingParams(top_p=1.5)
    # the CLI refuses before connecting (nothing listens on port 1) and exits 2
    r = CliRunner().invoke(app, ["triton", "generate", "hi", "--max-tokens", "4294967297", "--url", "127.0.0.1:1"])
    assert r.exit_code == 2 and "4294967297" in flat(r.output) and "out of range" in flat(r.output)


def test_every_triton_option_has_help():
    import click
    import typer.main

    group = typer.main.get_command(app).commands["triton"]
    missing = []
    for name, cmd in group.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{name} {p.opts[0]}")
    assert not missing, missing
    r = CliRunner().invoke(app, ["triton", "repo", "--help"])
    assert "--batching" not in r.output and "--threads" in r.output
