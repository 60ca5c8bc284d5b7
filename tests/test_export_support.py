"""Helpers shared by the export/build tests (no tests here): tiny 2:4-pruned HF folders with a real manifest."""

from __future__ import annotations

from pathlib import Path

import tiny
import torch

from sparse_trt.core.manifest import CalibrationSpec, LayerRecord, Manifest
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.models.adapters import adapter_for, all_targets


def magnitude_2of4(w_out_in: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive inputs."""
    g = w_out_in.reshape(-1, 4)
    keep = g.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(1, keep, True)
    return (g * mask).reshape(w_out_in.shape)


def save_pruned(model, path: Path, family: str) -> Path:
    """Prune every decoder linear of ``model`` to 2:4 (magnitude) and save it with a sparsity.json."""
    adapter = adapter_for(model.config.model_type)
    records = []
    with torch.no_grad():
        for t in all_targets(model, adapter):
            w = magnitude_2of4(t.weight_out_in().clone())
            t.set_weight_out_in(w)
            assert nm_violations(t.module.weight, NM(2, 4), t.in_dim) == 0
            records.append(LayerRecord(t.name, tuple(t.module.weight.shape), t.in_dim, "2:4", 0.5))
    model.save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    Manifest(
        tool="sparse_trt", version="0.1.0", method="magnitude", method_options={}, pattern="2:4",
        model={"source": "tiny", "model_type": model.config.model_type, "family": family},
        calibration=CalibrationSpec("none", 0, 0, 0), layers=tuple(records),
    ).save(path)
    return path


def pruned_tiny(family: str, path: Path, **config_overrides) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny.config(family)
    for k, v in config_overrides.items():
        setattr(cfg, k, v)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    return save_pruned(model, path, family)
