"""Offline tests of Triton repository generation and checking (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed (pip install 'sparse_trt[triton]')")

from sparse_trt.cli.main import app  # noqa: E402
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
    assert res.entry == "ensemble"
    assert set(res.models) == {"ensemble", "preprocessing", "tensorrt_llm", "postprocessing"}
    rep = check_repo(res.path)
    assert rep.ok, rep.problems
    assert rep.entry_points() == ["ensemble"]
    llm = pbtxt.read_config(res.path / "tensorrt_llm" / "config.pbtxt")
    assert llm.backend == "tensorrtllm" and llm.model_transaction_policy.decoupled
    assert llm.parameters["gpt_model_path"].string_value == str(eng.absolute())
    assert llm.parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.8"
    assert llm.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    for m in ("preprocessing", "postprocessing"):
        assert (res.path / m / "1" / "model.py").is_file()
        cfg = pbtxt.read_config(res.path / m / "config.pbtxt")
        assert cfg.parameters["tokenizer_dir"].string_value == str(llama.absolute())
    text = (res.path / "ensemble" / "config.pbtxt").read_text()
    assert "${" not in text and 'platform: "ensemble"' in text


def test_trtllm_repo_options_and_name_prefix(tmp_path, llama):
    eng = fake_engine(tmp_path / "engine")
    res = build_trtllm_repo(eng, llama, tmp_path / "repo", name="sparse", decoupled=False, batching="v1", instances=2)
    assert res.models == ["sparse", "sparse_preprocessing", "sparse_tensorrt_llm", "sparse_postprocessing"]
    assert check_repo(res.path).ok
    llm = pbtxt.read_config(res.path / "sparse_tensorrt_llm" / "config.pbtxt")
    assert not llm.model_transaction_policy.decoupled
    assert llm.parameters["gpt_model_type"].string_value == "V1"
    assert pbtxt.read_config(res.path / "sparse_preprocessing" / "config.pbtxt").instance_group[0].count == 2
    assert any("decoupled" in n for n in res.notes)


def test_pytorch_repo(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo", device="cpu", max_batch_size=3)
    rep = check_repo(res.path)
    assert rep.ok, rep.problems
    cfg = pbtxt.read_config(res.path / "pytorch_llm" / "config.pbtxt")
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled
    assert cfg.parameters["model_dir"].string_value == str(llama.absolute())
    assert cfg.parameters["device"].string_value == "cpu"
    assert cfg.parameters["max_concurrency"].string_value == "3"
    assert (res.path / "pytorch_llm" / "1" / "model.py").is_file()
    assert (res.path / "ensemble" / "1").is_dir()


def test_check_rejects_unknown_fields_and_placeholders(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo")
    p = res.path / "pytorch_llm" / "config.pbtxt"
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


def test_check_model_folder_problems(tmp_path, llama):
    res = build_pytorch_repo(llama, tmp_path / "repo")
    (res.path / "pytorch_llm" / "1" / "model.py").unlink()
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
    build_pytorch_repo(llama, out, overwrite=True)
    assert not (out / "keep.txt").exists() and check_repo(out).ok


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
    (out / "pytorch_llm" / "config.pbtxt").write_text("name: 'pytorch_llm'\nnot_a_field: 1\n")
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
    (res.path / "pytorch_llm" / "config.pbtxt").write_text('name: "pytorch_llm"\nbackend: "python"\nwhat: 1\n')
    with pytest.raises(TritonRepoError, match="has problems"):
        TritonServer([res.path]).start()
