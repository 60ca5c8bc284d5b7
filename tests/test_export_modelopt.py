"""Cross-check our export against NVIDIA's own exporter (ModelOpt's export_tensorrt_llm_checkpoint).

CI install (no CUDA torch, no GBs):
    pip install --no-deps nvidia-modelopt==0.47.0 && pip install omegaconf pulp ninja
Skips cleanly when modelopt is absent.

Deliberate differences, not compared value-for-value:
* ``use_parallel_embedding``: ModelOpt splits ``transformer.vocab_embedding.weight`` over tp ranks;
  we replicate it, as TensorRT-LLM's own HF converters do by default. We check that each ModelOpt
  slice equals the matching rows of our (full) table instead.
* ``logits_dtype``: ModelOpt writes the weight dtype; TensorRT-LLM's converters default to float32
  logits, which we keep.
* extra ModelOpt-only keys (``producer``, ``rank``, ``decoder``, ``rmsnorm``, ...) are informational.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from test_export_support import pruned_tiny

from sparse_trt.export.trtllm import export_trtllm

mte = pytest.importorskip("modelopt.torch.export", reason="nvidia-modelopt not installed (pip install --no-deps nvidia-modelopt==0.47.0 omegaconf pulp ninja)")

SAME_FIELDS = (
    "architecture", "dtype", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
    "intermediate_size", "vocab_size", "head_size", "position_embedding_type", "hidden_act", "norm_epsilon",
    "max_position_embeddings", "embedding_sharding_dim",
)


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    return pruned_tiny("llama", tmp_path_factory.mktemp("m") / "llama")


@pytest.mark.parametrize("tp", [1, 2])
def test_same_as_modelopt(pruned, tmp_path, tp):
    from transformers import AutoModelForCausalLM

    ours, theirs = tmp_path / "ours", tmp_path / "modelopt"
    export_trtllm(pruned, ours, dtype=torch.float16, tp=tp)
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float16).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mte.export_tensorrt_llm_checkpoint(model, "llama", dtype=torch.float16, export_dir=theirs, inference_tensor_parallel=tp)

    a = json.loads((ours / "config.json").read_text())
    b = json.loads((theirs / "config.json").read_text())
    for key in SAME_FIELDS:
        assert a[key] == b[key], key
    for key in ("world_size", "tp_size", "pp_size"):
        assert a["mapping"][key] == b["mapping"][key], key
    assert a["quantization"]["quant_algo"] is None and b["quantization"]["quant_algo"] is None
    assert b["use_parallel_embedding"] is True and a["use_parallel_embedding"] is False  # deliberate, see module doc

    for r in range(tp):
        x, y = _read(ours / f"rank{r}.safetensors"), _read(theirs / f"rank{r}.safetensors")
        assert set(x) == set(y)
        for name in sorted(x):
            if name == "transformer.vocab_embedding.weight" and tp > 1:
                assert torch.equal(x[name].chunk(tp)[r], y[name]), name
                continue
            assert x[name].shape == y[name].shape, name
            assert x[name].dtype == y[name].dtype, name
            assert torch.equal(x[name], y[name]), name
