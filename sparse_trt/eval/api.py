"""The eval job: load a model (dense or pruned), compute perplexity, record it in the manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from sparse_trt.core.atomic import atomic_write_text
from sparse_trt.core.errors import InputError
from sparse_trt.core.manifest import MANIFEST_NAME
from sparse_trt.data.text import TextSource
from sparse_trt.data.windows import eval_windows
from sparse_trt.models.loading import LoadedModel, load_model

from .perplexity import PerplexityResult, perplexity, to_result


def heldout_windows(loaded: LoadedModel, data: TextSource, seqlen: int, max_windows: int | None) -> tuple[torch.Tensor, bool]:
    """The held-out windows a model is scored on, and whether they start with BOS; --seqlen checked first."""
    limit = loaded.context_limit()
    if limit is not None and seqlen > limit:
        raise InputError(f"--seqlen {seqlen} exceeds the model's context of {limit} tokens", fix=f"use --seqlen {limit} or less")
    bos = loaded.add_bos()
    return eval_windows(loaded.tokenizer, data, seqlen, max_windows, bos), bos


def evaluate_loaded(
    loaded: LoadedModel,
    name: str,
    data: TextSource,
    seqlen: int,
    max_windows: int | None,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    windows, bos = heldout_windows(loaded, data, seqlen, max_windows)
    loaded.model.to(device)
    nll, tokens = perplexity(loaded.model, windows, device, progress=progress)
    return to_result(name, data.name, windows, nll, tokens, bos)


def run_eval(
    model: str,
    data: TextSource,
    seqlen: int,
    max_windows: int | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
    record: bool = True,
    progress: Callable[[int, int], None] | None = None,
    trust_remote_code: bool = False,
    simulate_quant: bool = True,
) -> PerplexityResult:
    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    spec = quant_spec_of(model) if simulate_quant else None
    if spec is not None:  # a quantized folder: perplexity as the FP8 / INT8 engine computes it (eval/simquant.py)
        from .simquant import simulated_quantization

        with simulated_quantization(loaded.model, loaded.adapter, spec):
            result = evaluate_loaded(loaded, f"{model} [{spec.format} simulated]", data, seqlen, max_windows, device, progress)
    else:
        result = evaluate_loaded(loaded, model, data, seqlen, max_windows, device, progress)
    if record:
        record_quality(Path(model), result, key="perplexity" if spec is None else f"perplexity_{spec.format}_simulated")
    return result


def perplexity_key(model: str, simulate_quant: bool = True) -> str:
    """Where ``run_eval`` records the perplexity in the folder's sparsity.json (``quality.<key>``)."""
    spec = quant_spec_of(model) if simulate_quant else None
    return "perplexity" if spec is None else f"perplexity_{spec.format}_simulated"


def quant_spec_of(model: str):
    """The quantization.json of a model folder, or None (not a folder, or not quantized)."""
    from sparse_trt.quantize.spec import load_quant_spec

    p = Path(model)
    return load_quant_spec(p) if p.is_dir() else None


def recorded_quality(directory: Path, key: str = "dense_perplexity") -> PerplexityResult | None:
    """The perplexity result stored under ``quality[key]`` of the directory's manifest, if any.

    ``dense_perplexity`` is the dense model's figure the demo (or a user) recorded beside the pruned
    one; a result that does not parse (older or hand-edited manifests) counts as absent.
    """
    p = Path(directory) / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        entry = json.loads(p.read_text(encoding="utf-8")).get("quality", {}).get(key)
        return PerplexityResult(**entry) if isinstance(entry, dict) else None
    except (ValueError, TypeError, AttributeError):
        return None


def same_windows(a: PerplexityResult, b: PerplexityResult) -> bool:
    """Were the two perplexities measured on the same text, window length and window count?"""
    return (a.data, a.seqlen, a.windows, a.bos) == (b.data, b.seqlen, b.windows, b.bos)


def record_quality(directory: Path, result: PerplexityResult, key: str = "perplexity") -> bool:
    """Store the result under ``quality[key]`` of the directory's manifest, if it has one."""
    p = Path(directory) / MANIFEST_NAME
    if not p.is_file():
        return False
    d = json.loads(p.read_text(encoding="utf-8"))
    d.setdefault("quality", {})[key] = result.to_dict()
    atomic_write_text(p, json.dumps(d, indent=2) + "\n")
    return True
