"""Engine builds without a GPU: the TensorRT-LLM pin check, and the whole build flow against a stand-in trtllm-build."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from test_export_support import pruned_tiny

from sparse_trt.core.errors import InputError, MissingDependencyError
from sparse_trt.engine import trtllm as bt
from sparse_trt.engine.report import read_report
from sparse_trt.engine.trtllm import BuildError, BuildRequest, build_engine
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


def _weights(ckpt_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt_dir) / "rank0.safetensors"))


def test_sparse_build_report(ckpt, tmp_path):
    out = tmp_path / "engines" / "tiny"
    report = build_engine(BuildRequest(ckpt, out, max_batch_size=4, max_input_len=64, max_seq_len=128), builder=FAKE)
    on_disk = json.loads((out / "build_report.json").read_text())
    assert on_disk == report.to_dict()
    assert on_disk["schema"] == "sparse_trt.build_report" and on_disk["schema_version"] == 2
    assert read_report(out) == report  # the one reader gives back what the one writer wrote
    assert report.mode == "sparse" and report.settings.weight_sparsity is True
    cmd = list(report.command)
    assert "--weight_sparsity" in cmd and cmd[cmd.index("--gemm_plugin") + 1] == "disable"
    assert cmd[cmd.index("--multiple_profiles") + 1] == "enable"
    assert cmd[cmd.index("--output_timing_cache") + 1].endswith("timing.cache")
    assert (out / "timing.cache").is_file() and report.settings.timing_cache == "timing.cache"
    assert not Path("model.cache").exists()
    sp = report.sparsity
    assert sp.eligible_count == 11 and sp.picked_count == 8 and sp.picked_gemm_count == 8 and sp.unmapped_layers == ()
    w = _weights(ckpt)
    lin = {k: v.numel() for k, v in w.items() if k.endswith(("qkv.weight", "dense.weight", "fc.weight", "gate.weight",
                                                                 "proj.weight")) or k == "lm_head.weight"}
    picked = sum(v for k, v in lin.items() if k.endswith(("qkv.weight", "fc.weight", "gate.weight", "proj.weight")))
    assert sp.sparse_weight_fraction == pytest.approx(picked / sum(lin.values()), abs=1e-6)
    assert report.checkpoint.linear_weight_params == sum(lin.values())
    assert sp.verdict == ("sparse" if picked / sum(lin.values()) > 0.5 else "partly sparse")
    # the engine's own config, as trtllm-build recorded it
    assert report.engine.multiple_profiles is True and report.engine.opt_num_tokens is None
    assert report.engine.use_fused_mlp is True and report.engine.max_num_tokens == 4 * 128
    assert report.engine_bytes == 1000 and list(report.engine_files) == ["rank0.engine"]
    assert report.checkpoint.pattern_2of4.along_input == 10 and report.checkpoint.precision == "float16"
    assert report.checkpoint.quant_algo is None
    assert report.build_seconds > 0
    assert (out / "rank0.engine").is_file() and (out / "config.json").is_file() and (out / "sparsity.json").is_file()
    assert "(Sparsity) Layers eligible" in (out / "build.log").read_text()
    assert (tmp_path / "engines" / "tiny.build.log").is_file()
    assert not (out / "_engines").exists()


def test_fused_mlp_log_maps_fused_fc_to_gate_and_fc(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_LOG", "trtllm_build_sparse_llama_fused.log")
    report = build_engine(BuildRequest(ckpt, tmp_path / "eng"), builder=FAKE)
    sp = report.sparsity
    assert sp.picked_count == 6 and sp.picked_gemm_count == 8  # fused_fc = gate + fc
    assert "transformer.layers.1.mlp.gate" in sp.picked_linears and "transformer.layers.1.mlp.fc" in sp.picked_linears
    assert sp.unmapped_layers == () and sp.verdict in ("sparse", "partly sparse")


def test_foreign_node_is_kept_unmapped(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_LOG", "trtllm_build_sparse_foreignnode.log")
    report = build_engine(BuildRequest(ckpt, tmp_path / "eng"), builder=FAKE)
    sp = report.sparsity
    assert len(sp.foreign_nodes) == 1 and sp.foreign_nodes[0].startswith("{ForeignNode[")
    assert sp.unmapped_layers == sp.foreign_nodes
    assert sp.picked_linears == ("transformer.layers.0.mlp.fc", "transformer.layers.0.mlp.gate")
    assert sp.verdict == "partly sparse" and sp.sparse_weight_fraction < 0.5
    assert any("Myelin" in c for c in report.diagnosis) and any("0.5" in c or "50%" in c for c in report.diagnosis)


def test_one_profile_with_opt_num_tokens(ckpt, tmp_path):
    req = BuildRequest(ckpt, tmp_path / "eng", max_batch_size=8, max_seq_len=512, max_input_len=256,
                       multiple_profiles=False, opt_num_tokens=256, max_num_tokens=1024,
                       extra_args=("--use_fused_mlp", "disable"))
    report = build_engine(req, builder=FAKE)
    cmd = list(report.command)
    assert cmd[cmd.index("--opt_num_tokens") + 1] == "256" and cmd[cmd.index("--max_num_tokens") + 1] == "1024"
    assert cmd[cmd.index("--multiple_profiles") + 1] == "disable" and cmd[-2:] == ["--use_fused_mlp", "disable"]
    assert report.engine.opt_num_tokens == 256 and report.engine.multiple_profiles is False
    assert report.engine.use_fused_mlp is False and report.settings.extra_args == ("--use_fused_mlp", "disable")


def test_opt_num_tokens_needs_one_profile(ckpt, tmp_path):
    with pytest.raises(InputError, match="cannot be combined") as e:
        build_engine(BuildRequest(ckpt, tmp_path / "e", opt_num_tokens=256), builder=FAKE)
    assert "--no-multiple-profiles" in e.value.fix


def test_passthrough_parsing_and_refusals():
    assert bt.parse_passthrough(["--use_fused_mlp=disable", "--strip_plan", "--max_beam_width 2"]) == (
        "--use_fused_mlp", "disable", "--strip_plan", "--max_beam_width", "2")
    for own in ("--weight_sparsity", "--gemm_plugin=float16", "--max-batch-size=4", "--output_timing_cache x"):
        with pytest.raises(InputError, match="sets itself"):
            bt.parse_passthrough([own])
    with pytest.raises(InputError, match="not a trtllm-build flag"):
        bt.parse_passthrough(["use_fused_mlp"])


def test_dense_build_same_settings(ckpt, tmp_path):
    sparse = build_engine(BuildRequest(ckpt, tmp_path / "s"), builder=FAKE)
    dense = build_engine(BuildRequest(ckpt, tmp_path / "d", dense=True), builder=FAKE)
    assert "--weight_sparsity" not in dense.command and dense.mode == "dense"
    assert dataclasses.replace(sparse.settings, weight_sparsity=False) == dense.settings
    assert dense.engine.multiple_profiles is True  # both sides get the same profiles
    assert dense.sparsity.sparsity_lines_found is False and dense.diagnosis == () and dense.sparsity.verdict == "dense"


def test_build_from_pruned_hf_folder_exports_first(pruned, tmp_path):
    out = tmp_path / "eng"
    report = build_engine(BuildRequest(pruned, out, tp=2), builder=FAKE)
    assert report.exported_from_hf is True and report.checkpoint.world_size == 2
    assert sorted(report.engine_files) == ["rank0.engine", "rank1.engine"]
    assert not (out / "_checkpoint").exists()


def test_no_sparse_kernel_is_diagnosed(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_LOG", "trtllm_build_sparse_none_picked.log")
    report = build_engine(BuildRequest(ckpt, tmp_path / "eng"), builder=FAKE)
    assert report.sparsity.picked_count == 0 and report.sparsity.verdict == "dense"
    text = " | ".join(report.diagnosis)
    assert "slower" in text and "every optimization profile" in text
    one = build_engine(BuildRequest(ckpt, tmp_path / "one", multiple_profiles=False), builder=FAKE)
    text = " | ".join(one.diagnosis)  # one profile tuned at trtllm-build's default opt_num_tokens = max_batch_size
    assert one.engine.opt_num_tokens == 8 and "opt_num_tokens = 8 tokens" in text and "ignores --max-input-len" in text


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
    r = CliRunner().invoke(app, ["build", str(ckpt), "-o", str(tmp_path / "eng2"), "--opt-num-tokens", "64"])
    assert r.exit_code == 2 and "cannot be combined" in r.output
    r = CliRunner().invoke(app, ["build", str(ckpt), "-o", str(tmp_path / "eng3"), "--trtllm-arg=--weight_sparsity"])
    assert r.exit_code == 2 and "sets itself" in r.output


def test_cli_build_without_trtllm(ckpt, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    monkeypatch.delenv("SPARSE_TRT_TRTLLM_BUILD", raising=False)
    monkeypatch.setattr(bt, "trtllm_version", lambda: None)
    r = CliRunner().invoke(app, ["build", str(ckpt), "-o", str(tmp_path / "eng")])
    assert r.exit_code == 6 and "1.2" in r.output
