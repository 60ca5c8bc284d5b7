"""Parsing TensorRT's (Sparsity) lines out of build logs (fixtures written to the real formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparse_trt.engine.logparse import linear_of, linears_of, parse_build_log
from sparse_trt.engine.report import (
    SCHEMA,
    SCHEMA_VERSION,
    BuildReport,
    BuildReportError,
    CheckpointInfo,
    EngineSettings,
    Gpu,
    Pattern2of4,
    Settings,
    Versions,
    diagnose,
    load_report,
    write_report,
)
from sparse_trt.engine.trtllm import sparsity_section

LOGS = Path(__file__).parent / "fixtures" / "trt_logs"


def _parse(name):
    return parse_build_log((LOGS / name).read_text())


def _report(log, *, mode="sparse", gemm="disable", dtype="float16", pattern=(10, 10, 0), gpu=None,
            engine_opt=8, multiple=False):
    """A report as the builder assembles it, for a parsed log (no build)."""
    per_rank = [{f"transformer.layers.{i}.{b}": 4096 for i in (0, 1) for b in (
        "attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")} | {"lm_head": 8192}]
    r = BuildReport(
        schema=SCHEMA, schema_version=SCHEMA_VERSION, engine_dir="/e", mode=mode, source="/s", exported_from_hf=False,
        settings=Settings(mode == "sparse", gemm, 8, 2048, 4096, None, None, multiple, 1, (), None),
        engine=EngineSettings(8, 2048, 4096, 8192, None if multiple else engine_opt, multiple, True, gemm, mode == "sparse", 1),
        command=("trtllm-build",), build_seconds=1.0, engine_bytes=1, engine_files={"rank0.engine": 1},
        checkpoint=CheckpointInfo("/c", "LlamaForCausalLM", dtype, 1, 1, 1, Pattern2of4(*pattern), "2:4", None, None,
                                  dtype, 49152),
        versions=Versions("0", "1.2.0", "10", "2", gpu), sparsity=sparsity_section(mode, log, per_rank),
        log="/l", diagnosis=(),
    )
    return r


def test_sparse_build_log():
    p = _parse("trtllm_build_sparse_llama.log")
    assert p.has_sparsity_lines and len(p.blocks) == 1
    assert len(p.eligible) == 11  # 5 linears x 2 layers + lm_head
    assert len(p.picked) == 8  # qkv, fc, gate, proj in both layers
    assert p.picked_linears == [
        "transformer.layers.0.attention.qkv", "transformer.layers.0.mlp.fc", "transformer.layers.0.mlp.gate",
        "transformer.layers.0.mlp.proj", "transformer.layers.1.attention.qkv", "transformer.layers.1.mlp.fc",
        "transformer.layers.1.mlp.gate", "transformer.layers.1.mlp.proj",
    ]
    assert "lm_head" in p.eligible_linears and "lm_head" not in p.picked_linears
    assert "transformer.layers.1.attention.dense" in p.eligible_linears
    assert "transformer.layers.1.attention.dense" not in p.picked_linears
    assert p.engine_seconds == [15.182] and p.total_seconds == 21
    assert p.trtllm_version == "1.2.0"
    assert p.errors == []


def test_none_picked_and_diagnosis():
    p = _parse("trtllm_build_sparse_none_picked.log")
    assert len(p.eligible) == 11 and p.picked == [] and p.blocks[0].picked_seen
    report = _report(p, gpu=Gpu("NVIDIA GeForce RTX 2080", "7.5", None))
    assert report.sparsity.verdict == "dense" and report.sparsity.sparse_weight_fraction == 0.0
    causes = diagnose(report)
    assert any("no Sparse Tensor Cores" in c for c in causes)
    tactic = next(c for c in causes if "slower" in c)
    assert "opt_num_tokens = 8" in tactic and "ignores --max-input-len" in tactic
    assert "every optimization profile" in next(c for c in diagnose(_report(p, multiple=True)) if "slower" in c)
    assert diagnose(_report(p, mode="dense")) == []


def test_wrong_dimension_and_fp32_and_plugin_diagnosis():
    p = _parse("trtllm_build_dense.log")
    report = _report(p, gemm="float16", dtype="float32", pattern=(10, 0, 10))
    assert report.sparsity.verdict == "unknown"
    causes = " | ".join(diagnose(report))
    assert "printed no '(Sparsity)' lines" in causes
    assert "GEMM plugin" in causes and "float32" in causes and "output dimension" in causes


def test_fraction_and_verdict_threshold():
    full = _report(_parse("trtllm_build_sparse_llama.log"))
    # qkv, fc, gate, proj of both layers: 8 x 4096 of 10 x 4096 + 8192
    assert full.sparsity.sparse_weight_fraction == pytest.approx(8 * 4096 / (10 * 4096 + 8192), abs=1e-6)
    assert full.sparsity.verdict == "sparse" and diagnose(full) == []
    fn = _report(_parse("trtllm_build_sparse_foreignnode.log"))
    assert fn.sparsity.sparse_weight_fraction == pytest.approx(2 * 4096 / (10 * 4096 + 8192), abs=1e-6)
    assert fn.sparsity.verdict == "partly sparse"
    assert any("not above the 50% threshold" in c for c in diagnose(fn))


def test_report_round_trip_and_strict_reader(tmp_path):
    r = _report(_parse("trtllm_build_sparse_llama_fused.log"))
    write_report(tmp_path, r)
    assert load_report(tmp_path / "build_report.json") == r
    d = json.loads((tmp_path / "build_report.json").read_text())
    d["sparsity"]["surprise"] = 1
    (tmp_path / "x.json").write_text(json.dumps(d))
    with pytest.raises(BuildReportError, match="unknown keys"):
        load_report(tmp_path / "x.json")
    del d["sparsity"]["surprise"]
    del d["engine"]["use_fused_mlp"]
    (tmp_path / "x.json").write_text(json.dumps(d))
    with pytest.raises(BuildReportError, match="missing keys"):
        load_report(tmp_path / "x.json")
    (tmp_path / "x.json").write_text(json.dumps({"report_version": 1, "mode": "sparse"}))
    with pytest.raises(BuildReportError, match="schema version 2"):
        load_report(tmp_path / "x.json")


def test_fused_and_foreign_node_logs():
    p = _parse("trtllm_build_sparse_llama_fused.log")
    assert len(p.eligible) == 9 and len(p.picked) == 6 and p.unmapped == []
    assert "transformer.layers.0.mlp.gate" in p.picked_linears and "transformer.layers.0.mlp.fc" in p.picked_linears
    q = _parse("trtllm_build_sparse_foreignnode.log")
    assert len(q.foreign_nodes) == 1 and q.unmapped == q.foreign_nodes
    assert q.picked_linears == ["transformer.layers.0.mlp.fc", "transformer.layers.0.mlp.gate"]


def test_dense_log_has_no_sparsity_lines():
    p = _parse("trtllm_build_dense.log")
    assert not p.has_sparsity_lines and p.eligible == [] and p.engine_seconds == [13.551]


def test_tp2_log_has_one_block_per_engine():
    p = _parse("trtllm_build_sparse_tp2.log")
    assert len(p.blocks) == 2
    assert [len(b.picked) for b in p.blocks] == [6, 7]
    assert p.engine_seconds == [9.12, 9.404] and p.total_seconds == 82
    assert "transformer.layers.0.attention.qkv" in p.picked_linears  # only rank 1 picked it


def test_other_prefix_formats_and_fused_names():
    p = _parse("trtexec_sparsity_formats.log")
    assert len(p.blocks) == 2
    assert p.blocks[0].eligible == ["MatMul_401", "Conv_619 + Relu_620", "Conv_239"]
    assert p.blocks[0].picked == ["Conv_619 + Relu_620"]
    assert p.blocks[1].eligible == ["Conv_0"] and p.blocks[1].picked == [] and p.blocks[1].picked_seen


def test_failed_log_collects_errors():
    p = _parse("trtllm_build_failed.log")
    assert not p.has_sparsity_lines
    assert any("Error Code 2" in e for e in p.errors) and any("RuntimeError" in e for e in p.errors)


def test_linear_of_layer_names():
    assert linear_of("transformer/layers/11/mlp/gate/multiply_collect_L272/matmul_L1152/MATRIX_MULTIPLY_0") == "transformer.layers.11.mlp.gate"
    assert linear_of("LLaMAForCausalLM/transformer/layers/0/attention/dense/MATRIX_MULTIPLY_0") == "transformer.layers.0.attention.dense"
    assert linear_of("lm_head/MATRIX_MULTIPLY_0") == "lm_head"
    assert linear_of("transformer/layers/0/input_layernorm/NORMALIZATION_0") is None
    assert linear_of("{ForeignNode[transformer/ln_f/CONSTANT_0...]}") is None
    assert linears_of("transformer/layers/3/mlp/fused_fc/matmul_L1152/MATRIX_MULTIPLY_0") == [
        "transformer.layers.3.mlp.gate", "transformer.layers.3.mlp.fc"]
    assert linears_of("{ForeignNode[transformer/layers/0/mlp/fused_fc/MATRIX_MULTIPLY_0...lm_head/MATRIX_MULTIPLY_0]}") == []
