"""Gemma 3 (HF ``Gemma3ForCausalLM``) to TensorRT-LLM checkpoints, unquantized and FP8 / INT8-SQ, cross-checked
against NVIDIA ModelOpt 0.47's exporter (decoder type "gemma3").

The tiny model has random norm weights (so storing ``1 + w`` and each norm's place matter), a sliding
window of 8 and the layout sliding / global (``_sliding_window_pattern`` 2), and runs 40-token windows,
so both attention kinds and the window are exercised.

ModelOpt tests skip cleanly without it (pip install --no-deps nvidia-modelopt==0.47.0 omegaconf pulp ninja).
Deliberate differences from ModelOpt, not compared value for value:
* ``lm_head.weight``: we write it (the embedding table, padded and split like every head), as TensorRT-LLM's
  own Gemma converter does; ModelOpt omits it for Gemma and marks ``share_embedding_table``. We check it
  equals ModelOpt's embedding rows instead.
* config: ModelOpt 0.47 hands the Gemma 3 config to TensorRT-LLM's ``GemmaConfig.from_hugging_face`` and
  raises without tensorrt_llm (not installable here). The tests let ModelOpt build its generic
  (Gemma 1 style) config so that its *tensors* can be compared; only the generic fields are compared
  with it. The Gemma 3 fields (query_pre_attn_scalar, sliding window, pattern, local RoPE base,
  inter_layernorms) are checked against the HF config and TensorRT-LLM's source facts in
  test_config_names_shapes_and_2of4, and their meaning by the reference forward.
* the source is float16 on both sides: from a float32 source we add 1 to the norms in float32 and round
  once (as TensorRT-LLM's converter does), while ModelOpt given the model cast to float16 rounds twice.
* ``use_parallel_embedding`` at tp 1: ModelOpt writes true for every model; TensorRT-LLM's GemmaConfig
  replaces the value with ``tp_size > 1`` on load, which is what we write. ``logits_dtype`` as in
  tests/test_export_modelopt.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path

import pytest
import tiny
import torch
from safetensors import safe_open
from test_export_support import save_pruned

from sparse_trt.core.errors import UnsupportedModelError
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.export.trtllm import export_trtllm, load_checkpoint, reference_logits
from sparse_trt.export.trtllm.errors import ShardingError
from sparse_trt.export.trtllm.families import _gemma3

OVERRIDES = {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"], "_sliding_window_pattern": 2}
LINEARS = (".qkv.weight", ".dense.weight", ".fc.weight", ".gate.weight", ".proj.weight")
NORMS = ("input_layernorm", "post_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
         "attention.q_layernorm", "attention.k_layernorm")
HF_NORM = {"input_layernorm": "input_layernorm", "post_layernorm": "post_attention_layernorm",
           "pre_feedforward_layernorm": "pre_feedforward_layernorm",
           "post_feedforward_layernorm": "post_feedforward_layernorm",
           "attention.q_layernorm": "self_attn.q_norm", "attention.k_layernorm": "self_attn.k_norm"}
NSAMPLES, SEQLEN = 4, 32


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _build(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny.config("gemma3")
    for k, v in OVERRIDES.items():
        setattr(cfg, k, v)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # HF initialises Gemma norms to 0 (scale 1): make every norm count
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return save_pruned(model.to(dtype), path, "gemma3")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("g3") / "gemma3")


@pytest.fixture(scope="module")
def hf_logits(pruned):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, tiny.VOCAB, (40,), generator=torch.Generator().manual_seed(0))
    m = AutoModelForCausalLM.from_pretrained(pruned).eval()
    with torch.no_grad():
        return ids, m(ids[None]).logits[0]


# ------------------------------------------------------------------------------ unquantized


@pytest.mark.parametrize("tp", [1, 2])
def test_reference_forward_reproduces_hf_logits(pruned, hf_logits, tmp_path, tp):
    res = export_trtllm(pruned, tmp_path / "ckpt", dtype=torch.float32, tp=tp)
    assert res.family == "gemma3" and res.checked_weights == 14 * tp
    ids, ref = hf_logits
    got = reference_logits(load_checkpoint(tmp_path / "ckpt"), ids)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_reference_forward_notices_wrong_norms_window_and_scale(pruned, hf_logits, tmp_path):
    """The reference forward would catch a norm stored without +1, swapped feed-forward norms, a lost window."""
    export_trtllm(pruned, tmp_path / "ckpt", dtype=torch.float32)
    ids, ref = hf_logits
    ck = load_checkpoint(tmp_path / "ckpt")
    ok = (reference_logits(ck, ids) - ref).abs().max()
    r0 = ck.ranks[0]

    def moved(edit) -> float:
        c = copy.deepcopy(ck)
        edit(c)
        return float((reference_logits(c, ids) - ref).abs().max())

    p = "transformer.layers.0."
    assert moved(lambda c: c.ranks[0][p + "post_feedforward_layernorm.weight"].sub_(1)) > 100 * ok
    assert moved(lambda c: c.ranks[0].update({p + "pre_feedforward_layernorm.weight": r0[p + "post_feedforward_layernorm.weight"],
                                              p + "post_feedforward_layernorm.weight": r0[p + "pre_feedforward_layernorm.weight"]})) > 100 * ok
    assert moved(lambda c: c.config.update(sliding_window=1000)) > 100 * ok
    assert moved(lambda c: c.config.update(query_pre_attn_scalar=16)) > 100 * ok


def test_config_names_shapes_and_2of4(pruned, tmp_path):
    from safetensors.torch import load_file

    hf = json.loads((pruned / "config.json").read_text())
    src = load_file(str(pruned / "model.safetensors"))
    out = tmp_path / "ckpt"
    export_trtllm(pruned, out, dtype=torch.float16, tp=2)
    cfg = json.loads((out / "config.json").read_text())
    # TensorRT-LLM 1.2 GemmaConfig (Gemma3ConfigGroup + GEMMA_ADDED_FIELDS), values from the HF config
    assert cfg["architecture"] == "Gemma3ForCausalLM" and cfg["hidden_act"] == "gelu"
    assert cfg["use_parallel_embedding"] is True and cfg["embedding_sharding_dim"] == 0
    assert cfg["inter_layernorms"] is True and cfg["attn_bias"] is False and cfg["mlp_bias"] is False
    assert (cfg["query_pre_attn_scalar"], cfg["sliding_window"], cfg["_sliding_window_pattern"]) == (
        hf["query_pre_attn_scalar"], 8, 2)
    assert cfg["rotary_base"] == hf["rope_parameters"]["full_attention"]["rope_theta"] == 1e6
    assert cfg["rope_local_base_freq"] == hf["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4
    assert cfg["final_logit_softcapping"] is None and cfg["rotary_scaling"] is None
    assert (cfg["head_size"], cfg["norm_epsilon"], cfg["position_embedding_type"]) == (16, 1e-6, "rope_gpt_neox")
    for r in range(2):
        t = _read(out / f"rank{r}.safetensors")
        assert t["transformer.vocab_embedding.weight"].shape == (160, 64)  # split like the head
        torch.testing.assert_close(t["transformer.vocab_embedding.weight"].float(),
                                   src["model.embed_tokens.weight"].chunk(2)[r].half().float(), rtol=0, atol=0)
        assert torch.equal(t["lm_head.weight"], t["transformer.vocab_embedding.weight"])  # tied
        assert torch.equal(t["transformer.ln_f.weight"], (src["model.norm.weight"].float() + 1).half())
        for i in range(2):
            p = f"transformer.layers.{i}."
            for norm in NORMS:
                assert torch.equal(t[p + norm + ".weight"], (src[f"model.layers.{i}.{HF_NORM[norm]}.weight"] + 1).half()), norm
            assert t[p + "attention.q_layernorm.weight"].shape == (16,)
            assert t[p + "attention.qkv.weight"].shape == ((2 + 1 + 1) * 16, 64)
            assert torch.equal(t[p + "mlp.fc.weight"], src[f"model.layers.{i}.mlp.gate_proj.weight"].chunk(2)[r].half())
            assert torch.equal(t[p + "mlp.gate.weight"], src[f"model.layers.{i}.mlp.up_proj.weight"].chunk(2)[r].half())
        for name, w in t.items():
            if name.endswith(LINEARS):
                assert nm_violations(w, NM(2, 4), 1) == 0, name


def test_refusals(pruned, tmp_path):
    with pytest.raises(ShardingError, match="pipeline-parallel"):
        export_trtllm(pruned, tmp_path / "pp", dtype=torch.float16, pp=2)
    assert not (tmp_path / "pp").exists()
    hf = json.loads((pruned / "config.json").read_text())

    def never(name):
        raise AssertionError(f"read {name} before refusing")

    bad = [{"layer_types": ["full_attention", "sliding_attention"]}, {"attn_logit_softcapping": 50.0},
           {"hidden_activation": "silu"},
           {"rope_parameters": {**hf["rope_parameters"], "sliding_attention": {"rope_type": "linear", "factor": 8.0,
                                                                               "rope_theta": 1e4}}}]
    for change in bad:
        with pytest.raises(UnsupportedModelError, match="Gemma 3"):
            _gemma3({**hf, **change}, never, never, "float16")


def test_kv_hooks_keep_the_sliding_window():
    """Quantize's KV-cache hooks must not change the model: Gemma 3's local layers keep their window."""
    from sparse_trt.quantize.calibrate import kv_hooks

    m = tiny.build("gemma3")
    ids = torch.randint(3, tiny.VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    seen = []
    with torch.no_grad():
        want = m(input_ids=ids, use_cache=False).logits
        with kv_hooks(m, m.model.layers, "model.layers", lambda n, k, v: (seen.append(n), (k, v))[1]):
            got = m(input_ids=ids, use_cache=False).logits
    assert seen and torch.equal(got, want)


def _quantize(pruned: Path, out: Path, fmt: str, kv: str | None, calib: Path, exclude: tuple[str, ...] = ()):
    from sparse_trt.data.text import parse_source
    from sparse_trt.quantize.api import QuantizeOptions, quantize_model
    from sparse_trt.quantize.formats import parse_format, parse_kv_format

    f = parse_format(fmt)
    opts = QuantizeOptions(f, parse_kv_format(kv, f), parse_source(str(calib)), nsamples=NSAMPLES, seqlen=SEQLEN,
                           exclude=exclude)
    return quantize_model(str(pruned), out, opts, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """The pruned model in float16 (quantize and export in float16 on both sides) and a calibration text."""
    root = tmp_path_factory.mktemp("g3h")
    text = root / "calib.txt"
    text.write_text(tiny.corpus_text(20000, 3))
    return _build(root / "gemma3", torch.float16), text


def test_fp8_quantize_and_export_keeps_2of4(half, tmp_path):
    pruned, calib = half
    q = _quantize(pruned, tmp_path / "q", "fp8", "fp8", calib)
    assert q.checked_weights > 0
    res = export_trtllm(q.out, tmp_path / "ckpt", dtype=torch.float16, tp=2)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["quantization"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}
    assert res.checked_weights == 28
    for r in range(2):
        t = _read(tmp_path / "ckpt" / f"rank{r}.safetensors")
        for name, w in t.items():
            if name.endswith(LINEARS):
                assert w.dtype == torch.float8_e4m3fn and nm_violations(w.float(), NM(2, 4), 1) == 0, name
                assert t[name.replace(".weight", ".weights_scaling_factor")].shape == (1,)
        assert t["transformer.layers.1.attention.q_layernorm.weight"].dtype == torch.float16


def test_int8sq_exclude_names_trtllm_modules(half, tmp_path):
    """--exclude on Gemma 3: the excluded MLP stays float16 without scales and exclude_modules names it exactly."""
    pruned, calib = half
    q = _quantize(pruned, tmp_path / "q", "int8-sq", None, calib, exclude=("*layers.1.mlp.*",))
    export_trtllm(q.out, tmp_path / "ckpt", dtype=torch.float16, tp=2)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["quantization"]["exclude_modules"] == [
        "lm_head", "transformer.layers.1.mlp.fc", "transformer.layers.1.mlp.gate", "transformer.layers.1.mlp.proj"]
    t = _read(tmp_path / "ckpt" / "rank1.safetensors")
    assert t["transformer.layers.1.mlp.fc.weight"].dtype == torch.float16
    assert "transformer.layers.1.mlp.fc.weights_scaling_factor" not in t
    assert t["transformer.layers.0.mlp.fc.weight"].dtype == torch.int8
    for name, w in t.items():
        if name.endswith(LINEARS):
            assert nm_violations(w, NM(2, 4), 1) == 0, name


# ------------------------------------------------------------------------------ ModelOpt


@pytest.fixture(scope="module")
def mo():
    mte = pytest.importorskip("modelopt.torch.export", reason="nvidia-modelopt not installed (pip install --no-deps nvidia-modelopt==0.47.0 omegaconf pulp ninja)")
    mtq = pytest.importorskip("modelopt.torch.quantization")
    return mte, mtq


@contextlib.contextmanager
def _generic_modelopt_config():
    """Let ModelOpt 0.47 write its generic (Gemma 1 style) config for Gemma 3, which it otherwise delegates to
    TensorRT-LLM (see the module docstring); its tensors are untouched."""
    import modelopt.torch.export.model_config_export as mce

    original = mce.convert_to_tensorrt_llm_config

    def convert(model_config, *args, **kwargs):
        kinds = [layer.decoder_type for layer in model_config.layers]
        for layer in model_config.layers:
            layer.decoder_type = "gemma"
        try:
            return original(model_config, *args, **kwargs)
        finally:
            for layer, kind in zip(model_config.layers, kinds, strict=True):
                layer.decoder_type = kind

    mce.convert_to_tensorrt_llm_config = convert
    try:
        yield
    finally:
        mce.convert_to_tensorrt_llm_config = original


def _same(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    if a.element_size() == 1:
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name  # bit for bit
    elif name.endswith("_scaling_factor"):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=name)
    else:
        assert torch.equal(a, b), name


def _compare_tensors(ours: Path, theirs: Path, tp: int) -> None:
    for r in range(tp):
        x, y = _read(ours / f"rank{r}.safetensors"), _read(theirs / f"rank{r}.safetensors")
        assert set(x) - set(y) == {"lm_head.weight"} and set(y) <= set(x), set(x) ^ set(y)
        assert torch.equal(x["lm_head.weight"], y["transformer.vocab_embedding.weight"])  # deliberate, module doc
        for name in sorted(y):
            _same(x[name], y[name], name)
        for name, t in x.items():
            if name.endswith(LINEARS):
                assert nm_violations(t.float() if t.element_size() == 1 and t.is_floating_point() else t, NM(2, 4), 1) == 0, name


@pytest.mark.parametrize("tp", [1, 2])
def test_same_as_modelopt(mo, half, tmp_path, tp):
    from transformers import AutoModelForCausalLM

    mte, _ = mo
    pruned, _ = half
    ours, theirs = tmp_path / "ours", tmp_path / "modelopt"
    export_trtllm(pruned, ours, dtype=torch.float16, tp=tp)
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float16).eval()
    with warnings.catch_warnings(), _generic_modelopt_config():
        warnings.simplefilter("ignore")
        mte.export_tensorrt_llm_checkpoint(model, "gemma3", dtype=torch.float16, export_dir=theirs, inference_tensor_parallel=tp)
    a = json.loads((ours / "config.json").read_text())
    b = json.loads((theirs / "config.json").read_text())
    for key in ("architecture", "dtype", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
                "intermediate_size", "vocab_size", "head_size", "position_embedding_type", "hidden_act", "norm_epsilon",
                "max_position_embeddings", "embedding_sharding_dim"):
        assert a[key] == b[key], key
    assert a["use_parallel_embedding"] is (tp > 1) and b["use_parallel_embedding"] is True  # deliberate, module doc
    assert a["quantization"]["quant_algo"] is None and b["quantization"]["quant_algo"] is None
    _compare_tensors(ours, theirs, tp)


@pytest.mark.parametrize(("fmt", "kv", "tp"), [("fp8", None, 1), ("fp8", "fp8", 2), ("int8-sq", "int8", 2)])
def test_quantized_same_as_modelopt(mo, half, tmp_path, fmt, kv, tp):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse_trt.data.text import parse_source
    from sparse_trt.data.windows import calibration_windows

    mte, mtq = mo
    pruned, calib = half
    q = _quantize(pruned, tmp_path / "q", fmt, kv, calib)
    ours, theirs = tmp_path / "ours", tmp_path / "modelopt"
    export_trtllm(q.out, ours, dtype=torch.float16, tp=tp)

    tok = AutoTokenizer.from_pretrained(pruned)
    # the same windows as quantize: the Gemma adapter starts every window with BOS
    windows = calibration_windows(tok, parse_source(str(calib)), NSAMPLES, SEQLEN, 0, True)
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float16).eval()
    cfg = copy.deepcopy({"fp8": mtq.FP8_DEFAULT_CFG, "int8-sq": mtq.INT8_SMOOTHQUANT_CFG}[fmt])
    if kv is not None:
        bits = {"fp8": (4, 3), "int8": 8}[kv]
        cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [{"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}}]

    def loop(m):
        for w in windows:
            m(input_ids=w[None], use_cache=False)

    with warnings.catch_warnings(), torch.no_grad(), _generic_modelopt_config():
        warnings.simplefilter("ignore")
        model = mtq.quantize(model, cfg, forward_loop=loop)
        mte.export_tensorrt_llm_checkpoint(model, "gemma3", dtype=torch.float16, export_dir=theirs, inference_tensor_parallel=tp)
    a = json.loads((ours / "config.json").read_text())["quantization"]
    b = json.loads((theirs / "config.json").read_text())["quantization"]
    assert a == b
    _compare_tensors(ours, theirs, tp)
