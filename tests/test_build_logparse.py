"""Parsing TensorRT's (Sparsity) lines out of build logs (fixtures written to the real formats)."""

from __future__ import annotations

from pathlib import Path

from sparse_trt.build.logparse import linear_of, parse_build_log
from sparse_trt.build.report import diagnose

LOGS = Path(__file__).parent / "fixtures" / "trt_logs"


def _parse(name):
    return parse_build_log((LOGS / name).read_text())


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
    report = {"mode": "sparse", "sparsity": p.to_dict(), "settings": {"gemm_plugin": "disable"},
              "checkpoint": {"dtype": "float16", "pattern_2of4": {"weights": 10, "along_input": 10, "along_output": 0}},
              "versions": {"gpu": {"name": "NVIDIA GeForce RTX 2080", "compute_capability": "7.5"}}}
    causes = diagnose(report)
    assert any("no Sparse Tensor Cores" in c for c in causes)
    assert any("slower" in c for c in causes)
    report["mode"] = "dense"
    assert diagnose(report) == []


def test_wrong_dimension_and_fp32_and_plugin_diagnosis():
    p = _parse("trtllm_build_dense.log")
    report = {"mode": "sparse", "sparsity": p.to_dict(), "settings": {"gemm_plugin": "float16"},
              "checkpoint": {"dtype": "float32", "pattern_2of4": {"weights": 10, "along_input": 0, "along_output": 10}},
              "versions": {}}
    causes = " | ".join(diagnose(report))
    assert "printed no '(Sparsity)' lines" in causes
    assert "GEMM plugin" in causes and "float32" in causes and "output dimension" in causes


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
