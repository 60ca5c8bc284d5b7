"""Engine builds without a GPU: the TensorRT-LLM pin check, and the whole build flow against a stand-in trtllm-build."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_export_support import pruned_tiny

from sparse_trt.build import trtllm as bt
from sparse_trt.build.trtllm import BuildError, BuildRequest, build_engine
from sparse_trt.core.errors import InputError, MissingDependencyError
from sparse_trt.export.trtllm import export_trtllm

FAKE = [sys.executable, str(Path(__file__).parent / "fixtures" / "trt_logs" / "fake_trtllm_build.py")]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return pruned_tiny("llama", tmp_path_factory.mktemp("m") / "llama")


@pytest.fixture(scope="module")
def ckpt(pruned, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "ckpt"
    export_trtllm(pruned, out, dtype=torch.float16)
    return out


def test_missing_trtllm_names_pin_and_container(monkeypatch, ckpt, tmp_path):
    monkeypatch.setattr(bt, "trtllm_version", lambda: None)
    monkeypatch.delenv("SPARSE_TRT_TRTLLM_BUILD", raising=False)
    with pytest.raises(MissingDependencyError) as e:
        build_engine(BuildRequest(ckpt, tmp_path / "eng"))
    assert "1.2.x" in str(e.value)
    assert "nvcr.io/nvidia/tensorrt-llm/release:1.2" in e.value.fix and "removed" in e.value.fix
    assert e.value.exit_code == 6
    assert not (tmp_path / "eng").exists()


@pytest.mark.parametrize("version,removed", [("1.3.0rc2", True), ("0.21.0", False)])
def test_wrong_trtllm_version(monkeypatch, version, removed):
    monkeypatch.setattr(bt, "trtllm_version", lambda: version)
    with pytest.raises(MissingDependencyError) as e:
        bt.check_trtllm()
    assert version in e.value.message and ("removed" in e.value.message) == removed


def test_pinned_version_accepted(monkeypatch):
    monkeypatch.setattr(bt, "trtllm_version", lambda: "1.2.0")
    assert bt.check_trtllm() == "1.2.0"


def test_sparse_build_report(ckpt, tmp_path):
    out = tmp_path / "engines" / "tiny"
    report = build_engine(BuildRequest(ckpt, out, max_batch_size=4, max_input_len=64, max_seq_len=128), builder=FAKE)
    on_disk = json.loads((out / "build_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["mode"] == "sparse" and report["settings"]["weight_sparsity"] is True
    assert "--weight_sparsity" in report["command"] and report["command"][report["command"].index("--gemm_plugin") + 1] == "disable"
    assert report["sparsity"]["eligible_count"] == 11 and report["sparsity"]["picked_count"] == 8
    assert report["engine_bytes"] == 1000 and list(report["engine_files"]) == ["rank0.engine"]
    assert report["checkpoint"]["pattern_2of4"] == {"weights": 10, "along_input": 10, "along_output": 0}
    assert report["diagnosis"] == [] and report["build_seconds"] > 0
    assert {"sparse_trt", "tensorrt_llm", "tensorrt", "gpu"} <= set(report["versions"])
    assert (out / "rank0.engine").is_file() and (out / "config.json").is_file() and (out / "sparsity.json").is_file()
    assert "(Sparsity) Layers eligible" in (out / "build.log").read_text()
    assert (tmp_path / "engines" / "tiny.build.log").is_file()
    assert not (out / "_engines").exists()


def test_dense_build_same_settings(ckpt, tmp_path):
    sparse = build_engine(BuildRequest(ckpt, tmp_path / "s"), builder=FAKE)
    dense = build_engine(BuildRequest(ckpt, tmp_path / "d", dense=True), builder=FAKE)
    assert "--weight_sparsity" not in dense["command"] and dense["mode"] == "dense"
    strip = [a for a in sparse["command"] if a != "--weight_sparsity"]
    assert [a if "/s/" not in a and not a.endswith("/s") else "X" for a in strip][: 3] == dense["command"][:3]
    assert {k: v for k, v in sparse["settings"].items() if k != "weight_sparsity"} == \
        {k: v for k, v in dense["settings"].items() if k != "weight_sparsity"}
    assert dense["sparsity"]["sparsity_lines_found"] is False and dense["diagnosis"] == []


def test_build_from_pruned_hf_folder_exports_first(pruned, tmp_path):
    out = tmp_path / "eng"
    report = build_engine(BuildRequest(pruned, out, tp=2), builder=FAKE)
    assert report["exported_from_hf"] is True and report["checkpoint"]["world_size"] == 2
    assert sorted(report["engine_files"]) == ["rank0.engine", "rank1.engine"]
    assert not (out / "_checkpoint").exists()


def test_no_sparse_kernel_is_diagnosed(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_LOG", "trtllm_build_sparse_none_picked.log")
    report = build_engine(BuildRequest(ckpt, tmp_path / "eng"), builder=FAKE)
    assert report["sparsity"]["picked_count"] == 0
    assert any("slower" in c for c in report["diagnosis"])


def test_failed_build_leaves_nothing(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "1")
    with pytest.raises(BuildError) as e:
        build_engine(BuildRequest(ckpt, tmp_path / "eng"), builder=FAKE)
    assert "exited with code 1" in str(e.value) and "Error Code 2" in str(e.value)
    assert "eng.build.log" in e.value.fix
    assert not (tmp_path / "eng").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eng.tmp-")]


def test_bad_build_settings(ckpt, tmp_path):
    with pytest.raises(InputError, match="exceeds --max-seq-len"):
        build_engine(BuildRequest(ckpt, tmp_path / "e", max_input_len=4096, max_seq_len=1024), builder=FAKE)
    with pytest.raises(InputError, match="not a folder"):
        build_engine(BuildRequest(tmp_path / "missing", tmp_path / "e"), builder=FAKE)


def test_cli_build_with_builder_override(ckpt, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    monkeypatch.setenv("SPARSE_TRT_TRTLLM_BUILD", " ".join(FAKE))
    monkeypatch.setenv("FAKE_TRTLLM_LOG", "trtllm_build_sparse_none_picked.log")
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["build", str(ckpt), "-o", str(tmp_path / "eng"), "--max-seq-len", "512", "--max-input-len", "256"])
    assert r.exit_code == 0, r.output
    assert "no layer got a sparse kernel" in r.output and "slower" in r.output
    assert (tmp_path / "eng" / "build_report.json").is_file()


def test_cli_build_without_trtllm(ckpt, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    monkeypatch.delenv("SPARSE_TRT_TRTLLM_BUILD", raising=False)
    monkeypatch.setattr(bt, "trtllm_version", lambda: None)
    r = CliRunner().invoke(app, ["build", str(ckpt), "-o", str(tmp_path / "eng")])
    assert r.exit_code == 6 and "1.2" in r.output
