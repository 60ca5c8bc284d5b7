"""CLI: prune / verify / eval, and every bad input of the pruning issue, with exit codes and no leftovers."""

from __future__ import annotations

import json
import shutil

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sparse_trt.cli.main import app

runner = CliRunner()


def run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output + (res.stderr if hasattr(res, "stderr") and res.stderr_bytes else "")


def prune_args(src, out, calib, *extra):
    return ("prune", src, "-o", out, "--calib", calib, "--nsamples", 4, "--seqlen", 32, "--device", "cpu", *extra)


def test_prune_verify_eval_roundtrip(tiny_dirs, calib_file, tmp_path):
    out = tmp_path / "p"
    code, text = run(*prune_args(tiny_dirs("llama"), out, calib_file, "--method", "wanda", "--pattern", "2:4"))
    assert code == 0, text
    assert "pruned 14 linears with wanda to 2:4" in text
    code, text = run("verify", out, "--json")
    assert code == 0, text
    rep = json.loads(text[text.index("{"):])
    assert rep["ok"] and len(rep["layers"]) == 14
    code, text = run("eval", out, "--data", calib_file, "--seqlen", 32, "--max-windows", 4, "--device", "cpu", "--json", tmp_path / "ppl.json")
    assert code == 0, text
    res = json.loads((tmp_path / "ppl.json").read_text())
    assert res["windows"] == 4 and res["tokens"] == 4 * 31 and res["perplexity"] > 1
    # recorded in the manifest for reports
    assert json.loads((out / "sparsity.json").read_text())["quality"]["perplexity"]["perplexity"] == res["perplexity"]
    # the output is an ordinary HF checkpoint
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out)
    assert float((m.model.layers[0].self_attn.q_proj.weight == 0).float().mean()) == 0.5


def test_verify_detects_violation_and_bad_manifest(tiny_dirs, calib_file, tmp_path):
    out = tmp_path / "p"
    assert run(*prune_args(tiny_dirs("gpt2"), out, calib_file, "--method", "magnitude"))[0] == 0
    sd = load_file(str(out / "model.safetensors"))
    sd["transformer.h.1.mlp.c_proj.weight"][0:4, 0] = 1.0  # a full group along the input dim (Conv1D: dim 0)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    code, text = run("verify", out)
    assert code == 4 and "transformer.h.1.mlp.c_proj" in text
    (out / "sparsity.json").write_text("{not json")
    code, text = run("verify", out)
    assert code == 3 and "sparsity.json" in text
    (out / "sparsity.json").unlink()
    code, text = run("verify", out)
    assert code == 3 and "not a sparse_trt-pruned" in text
    m = json.loads(json.dumps({"schema_version": 1}))
    (out / "sparsity.json").write_text(json.dumps({**m, "surprise": 1}))
    assert run("verify", out)[0] == 3


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--pattern", "4:2"), "4:2"),
        (("--pattern", "0:4"), "0:4"),
        (("--pattern", "abc"), "abc"),
        (("--pattern", "1.5"), "outside (0, 1)"),
        (("--pattern", "2:7"), "not divisible by M=7"),
        (("--nsamples", "0"), "nsamples"),
        (("--seqlen", "100000"), "exceeds the model's context of 256"),
        (("--method", "obs"), "method 'obs' is unknown"),
        (("--opt", "bogus=1"), "option 'bogus' is not an option of method 'sparsegpt'"),
        (("--opt", "damp=abc"), "damp"),
        (("--device", "tpu"), "device 'tpu'"),
        (("--dtype", "int3"), "dtype 'int3'"),
    ],
)
def test_bad_options(tiny_dirs, calib_file, tmp_path, extra, needle):
    out = tmp_path / "o"
    code, text = run(*prune_args(tiny_dirs("llama"), out, calib_file, *extra))
    assert code == 2, text
    assert needle in text and "fix:" in text
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


def test_bad_paths_and_models(tiny_dirs, calib_file, tmp_path):
    code, text = run(*prune_args(tmp_path / "missing", tmp_path / "o", calib_file))
    assert code == 2 and "does not exist" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = run(*prune_args(empty, tmp_path / "o", calib_file))
    assert code == 2 and "no config.json" in text
    # unsupported architecture lists what is supported
    weird = tmp_path / "weird"
    shutil.copytree(tiny_dirs("llama"), weird)
    cfg = json.loads((weird / "config.json").read_text())
    cfg["model_type"] = "bert"
    (weird / "config.json").write_text(json.dumps(cfg))
    code, text = run(*prune_args(weird, tmp_path / "o", calib_file))
    assert code == 2 and "not supported" in text and "llama" in text and "gpt2" in text
    # remote code is refused without the flag
    remote = tmp_path / "remote"
    shutil.copytree(tiny_dirs("llama"), remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    code, text = run(*prune_args(remote, tmp_path / "o", calib_file))
    assert code == 2 and "--trust-remote-code" in text
    # calibration file missing / too short (names tokens found and needed)
    code, text = run(*prune_args(tiny_dirs("llama"), tmp_path / "o", tmp_path / "nope.txt"))
    assert code == 2 and "nope.txt" in text
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    code, text = run(*prune_args(tiny_dirs("llama"), tmp_path / "o", short))
    assert code == 2 and "need 128" in text and "tokens" in text
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"txt": 1}\n')
    code, text = run(*prune_args(tiny_dirs("llama"), tmp_path / "o", bad_jsonl))
    assert code == 2 and "line 1" in text
    assert not (tmp_path / "o").exists()


def test_existing_out_refused_then_overwritten(tiny_dirs, calib_file, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, text = run(*prune_args(tiny_dirs("llama"), out, calib_file))
    assert code == 2 and "already exists" in text and "--overwrite" in text
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces only a folder this tool wrote (or an empty one): an unrelated folder is kept
    code, text = run(*prune_args(tiny_dirs("llama"), out, calib_file, "--overwrite"))
    assert code == 2 and "not written by sparse-trt" in text
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    code, text = run(*prune_args(tiny_dirs("llama"), out, calib_file, "--overwrite"))  # empty: replaced
    assert code == 0 and (out / "sparsity.json").is_file() and (out / ".sparse_trt").is_file()
    first = (out / "model.safetensors").read_bytes()
    code, text = run(*prune_args(tiny_dirs("llama"), out, calib_file, "--overwrite", "--method", "magnitude"))
    assert code == 0 and (out / "model.safetensors").read_bytes() != first  # its own output: replaced


def test_nan_weights_are_refused(tiny_dirs, calib_file, tmp_path):
    src = tmp_path / "nan"
    shutil.copytree(tiny_dirs("llama"), src)
    sd = load_file(str(src / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 3] = float("nan")
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    code, text = run(*prune_args(src, tmp_path / "o", calib_file))
    assert code == 5 and "NaN" in text
    assert not (tmp_path / "o").exists()


def test_exclude_and_progress_output(tiny_dirs, calib_jsonl, tmp_path):
    out = tmp_path / "o"
    code, text = run(*prune_args(tiny_dirs("opt"), out, calib_jsonl, "--exclude", "*.fc2", "--pattern", "0.5", "-v"))
    assert code == 0, text
    man = json.loads((out / "sparsity.json").read_text())
    assert all(not r["name"].endswith("fc2") for r in man["layers"]) and len(man["excluded"]) == 2
    assert man["pattern"] == "0.5"


def test_help_lists_commands():
    code, text = run("--help")
    assert code == 0
    for cmd in ("prune", "verify", "eval", "demo"):
        assert cmd in text
    assert torch.__version__
    assert tiny.VOCAB


def test_missing_gguf_and_unreachable_hub_id(calib_file, tmp_path, monkeypatch):
    code, text = run(*prune_args(tmp_path / "model.gguf", tmp_path / "o", calib_file))
    assert code == 2 and "GGUF file" in text and "model.gguf" in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = run(*prune_args("nobody-here/no-such-model", tmp_path / "o", calib_file))
    assert code == 2 and "nobody-here/no-such-model" in text and "fix:" in text
    assert not (tmp_path / "o").exists()
