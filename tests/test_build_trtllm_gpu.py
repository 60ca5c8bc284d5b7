"""Real engine builds (TensorRT-LLM 1.2.x + a CUDA GPU; run inside docker/). Skipped elsewhere.

    docker run --gpus all --rm -v $PWD:/w -w /w sparse-trt python3 -m pytest -m "trtllm and gpu" tests/test_build_trtllm_gpu.py
"""

from __future__ import annotations

import json

import pytest
import torch
from test_export_support import pruned_tiny

from sparse_trt.engine.trtllm import BuildRequest, build_engine, trtllm_version

pytestmark = [
    pytest.mark.trtllm,
    pytest.mark.gpu,
    pytest.mark.skipif(trtllm_version() is None or not (trtllm_version() or "").startswith("1.2"),
                       reason="needs TensorRT-LLM 1.2.x (use the docker/ image)"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    # a model big enough for TensorRT to consider sparse tactics, still tiny to build
    src = pruned_tiny("llama", root / "pruned", hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                      num_key_value_heads=8, head_dim=64)
    kw = dict(max_batch_size=4, max_input_len=64, max_seq_len=128)
    sparse = build_engine(BuildRequest(src, root / "sparse", **kw))
    dense = build_engine(BuildRequest(src, root / "dense", dense=True, **kw))
    return root, sparse, dense


def test_reports(engines):
    root, sparse, dense = engines
    assert json.loads((root / "sparse" / "build_report.json").read_text())["mode"] == "sparse"
    assert sparse.sparsity.sparsity_lines_found, "TensorRT printed no (Sparsity) lines with --weight_sparsity"
    assert sparse.sparsity.eligible_count > 0
    assert not dense.sparsity.sparsity_lines_found
    assert sparse.engine_bytes > 0 and dense.engine_bytes > 0
    assert (sparse.versions.tensorrt_llm or "").startswith("1.2")
    # real layer names: every eligible TensorRT layer maps to a linear or is kept as unmapped
    assert sparse.engine.use_fused_mlp is not None and sparse.engine.multiple_profiles is True
    assert (root / "sparse" / "timing.cache").is_file()


@pytest.mark.parametrize("which", ["sparse", "dense"])
def test_generation_runs(engines, which):
    from sparse_trt.core.deps import require

    require("tensorrt_llm")
    from tensorrt_llm.runtime import ModelRunner

    root, _, _ = engines
    runner = ModelRunner.from_dir(engine_dir=str(root / which))
    out = runner.generate([torch.tensor([1, 17, 45, 3], dtype=torch.int32)], max_new_tokens=8, end_id=2, pad_id=2)
    torch.cuda.synchronize()
    assert out.shape[-1] >= 4 + 1
