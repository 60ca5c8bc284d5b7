"""Bad input to the TensorRT-LLM exporter and reader: clear errors naming the input and the fix, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export_support import pruned_tiny

from sparse_trt.core.errors import ModelLoadError, OutputExistsError, UnsupportedModelError
from sparse_trt.export.trtllm import export_trtllm, load_checkpoint, parse_export_dtype
from sparse_trt.export.trtllm.errors import CheckpointError, NotPrunedError, PatternBrokenError, ShardingError


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return pruned_tiny("llama", tmp_path_factory.mktemp("m") / "llama")


@pytest.fixture(scope="module")
def ckpt(llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "ckpt"
    export_trtllm(llama, out, dtype=torch.float16, tp=2)
    return out


def _no_leftovers(parent, name):
    return not [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-") or p.name == name]


def test_not_pruned(tiny_dirs, tmp_path):
    with pytest.raises(NotPrunedError) as e:
        export_trtllm(tiny_dirs("llama"), tmp_path / "out", dtype=torch.float16)
    assert "sparsity.json" in str(e.value) and "--allow-dense" in e.value.fix
    assert e.value.exit_code == 2
    export_trtllm(tiny_dirs("llama"), tmp_path / "out", dtype=torch.float16, allow_dense=True)
    assert not (tmp_path / "out" / "sparsity.json").exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["producer"]["sparsity_pattern"] is None


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        export_trtllm(tmp_path, tmp_path / "out", dtype=torch.float16)
    with pytest.raises(ModelLoadError, match="does not exist"):
        export_trtllm(tmp_path / "nope", tmp_path / "out", dtype=torch.float16)


def test_unsupported_architecture_lists_supported(tiny_dirs, tmp_path):
    with pytest.raises(UnsupportedModelError) as e:
        export_trtllm(tiny_dirs("gpt_neox"), tmp_path / "out", dtype=torch.float16)
    assert "GPTNeoXForCausalLM" in str(e.value)
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel", "OPTForCausalLM"):
        assert arch in e.value.fix


def test_unsupported_dtype():
    with pytest.raises(Exception) as e:
        parse_export_dtype("int8")
    assert "int8" in str(e.value) and "float16" in e.value.fix
    assert parse_export_dtype("BFloat16") is torch.bfloat16


def test_tp_not_dividing_heads(llama, tmp_path):
    with pytest.raises(ShardingError) as e:
        export_trtllm(llama, tmp_path / "out", dtype=torch.float16, tp=3)
    assert "tp=3" in str(e.value) and "[1, 2, 4]" in e.value.fix
    assert _no_leftovers(tmp_path, "out")


def test_tp_cutting_groups_of_four_is_refused(tmp_path):
    # intermediate 72: tp=4 leaves 18 inputs of mlp.down_proj per rank -> groups of 4 cut in two
    src = pruned_tiny("llama", tmp_path / "m", intermediate_size=72)
    with pytest.raises(ShardingError) as e:
        export_trtllm(src, tmp_path / "out", dtype=torch.float16, tp=4)
    msg = str(e.value)
    assert "mlp.proj" in msg and "down_proj" in msg and "2:4" in msg
    assert e.value.fix == "use --tp one of [1, 2]"
    export_trtllm(src, tmp_path / "out", dtype=torch.float16, tp=2)  # a valid value works


def test_pp_not_dividing_layers_and_opt_pp(llama, tmp_path):
    with pytest.raises(ShardingError) as e:
        export_trtllm(llama, tmp_path / "out", dtype=torch.float16, pp=3)
    assert "2 decoder layers" in str(e.value) and "[1, 2]" in e.value.fix
    opt = pruned_tiny("opt", tmp_path / "opt")
    with pytest.raises(ShardingError, match="pipeline-parallel"):
        export_trtllm(opt, tmp_path / "out", dtype=torch.float16, pp=2)


def test_output_exists(llama, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        export_trtllm(llama, tmp_path / "out", dtype=torch.float16)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_corrupted_weight_breaks_pattern(tmp_path):
    src = pruned_tiny("llama", tmp_path / "m")
    sd = load_file(str(src / "model.safetensors"))
    w = sd["model.layers.1.mlp.up_proj.weight"]
    w[5, :4] = 1.0  # four non-zeros in one group of 4
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PatternBrokenError) as e:
        export_trtllm(src, tmp_path / "out", dtype=torch.float16)
    assert "model.layers.1.mlp.up_proj.weight" in str(e.value) and "sparse-trt verify" in e.value.fix
    assert e.value.exit_code == 4
    assert _no_leftovers(tmp_path, "out")


def test_checkpoint_missing_rank_file(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "rank1.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert "rank1.safetensors" in str(e.value) and "world_size=2" in str(e.value)


def test_checkpoint_mismatched_config(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.fc\.weight.*shape"):
        load_checkpoint(bad)
    cfg["intermediate_size"] = 128
    cfg["mapping"]["world_size"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="world_size=3"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)


def test_cli_errors_have_exit_codes(llama, tmp_path):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    r = CliRunner().invoke(app, ["export", "trtllm", str(llama), "-o", str(tmp_path / "o"), "--dtype", "int4"])
    assert r.exit_code == 2 and "int4" in r.output
    r = CliRunner().invoke(app, ["export", "trtllm", str(llama), "-o", str(tmp_path / "o"), "--tp", "8"])
    assert r.exit_code == 2 and "--tp one of" in r.output
