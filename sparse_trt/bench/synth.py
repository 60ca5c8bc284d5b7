"""Models built from a config on the spot (random weights): shape-faithful stand-ins for big models.

Used by benchmarks/gpu_check.sh to compare dense vs 2:4 at 7B-class shapes with nothing to download.
The 2:4 twin gets a magnitude 2:4 mask on every prunable linear and a sparsity.json manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sparse_trt
from sparse_trt.core.atomic import atomic_output_dir
from sparse_trt.core.errors import InputError
from sparse_trt.core.manifest import LayerRecord, Manifest
from sparse_trt.models.adapters import adapter_for, all_targets

# Architecture sizes only (layers are usually cut down with num_layers).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                     num_key_value_heads=32, num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096,
                     tie_word_embeddings=False),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, num_hidden_layers=32, vocab_size=32000, max_position_embeddings=8192,
                       tie_word_embeddings=False),
    # LLaMA-shaped checkpoints for memory benchmarks (SmolLM2's 49152-token vocabulary, untied head).
    "llama-0.5b": dict(model_type="llama", hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                       num_key_value_heads=8, num_hidden_layers=24, vocab_size=49152, max_position_embeddings=8192,
                       tie_word_embeddings=False),
    "llama-1.5b": dict(model_type="llama", hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                       num_key_value_heads=2, num_hidden_layers=28, vocab_size=49152, max_position_embeddings=8192,
                       tie_word_embeddings=False),
    "llama-3b": dict(model_type="llama", hidden_size=2048, intermediate_size=11008, num_attention_heads=16,
                     num_key_value_heads=2, num_hidden_layers=36, vocab_size=49152, max_position_embeddings=8192,
                     tie_word_embeddings=False),
}


def load_config_dict(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A preset name, a config.json file (or a folder holding one), or a dict with 'model_type'."""
    if isinstance(config, dict):
        d = dict(config)
    elif str(config) in PRESETS:
        d = dict(PRESETS[str(config)])
    else:
        p = Path(config)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise InputError(f"config '{config}' is neither a preset ({', '.join(PRESETS)}) nor a config.json",
                             fix="pass a preset name or a path to config.json")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"config '{p}' is unreadable ({e})") from None
    if not isinstance(d, dict) or "model_type" not in d:
        raise InputError(f"config '{config}' has no model_type", fix="a Hugging Face config.json names its model_type")
    return d


def build_from_config(config: str | Path | dict[str, Any], *, dtype: torch.dtype, seed: int,
                      num_layers: int | None = None) -> nn.Module:
    """A randomly initialised causal LM of the given architecture (on CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    d = load_config_dict(config)
    d.pop("architectures", None)
    if num_layers is not None:
        d["num_hidden_layers"] = int(num_layers)
    model_type = d.pop("model_type")
    adapter_for(model_type)  # refuse unsupported families early
    cfg = AutoConfig.for_model(model_type, **d)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def mask_2of4_(w: torch.Tensor) -> None:
    """Keep the 2 largest-magnitude weights of every 4 consecutive inputs (in place, [out, in])."""
    out_f, in_f = w.shape
    if in_f % 4:
        raise InputError(f"in_features {in_f} is not a multiple of 4: no 2:4 pattern possible")
    g = w.view(out_f, in_f // 4, 4)
    idx = g.abs().float().topk(2, dim=-1, largest=False).indices
    g.scatter_(-1, idx, torch.zeros_like(idx, dtype=w.dtype))


@dataclass(frozen=True)
class SynthPair:
    dense_dir: Path
    sparse_dir: Path
    layers: int
    params: int


def synth_pair(config: str | Path | dict[str, Any], out: Path, *, dtype: torch.dtype, seed: int,
               num_layers: int | None = None, overwrite: bool = False) -> SynthPair:
    """Write OUT/dense and OUT/sparse-2of4 (same random weights; the latter 2:4 magnitude-masked)."""
    model = build_from_config(config, dtype=dtype, seed=seed, num_layers=num_layers)
    adapter = adapter_for(model.config.model_type)
    out = Path(out)
    dense_dir, sparse_dir = out / "dense", out / "sparse-2of4"
    with atomic_output_dir(dense_dir, overwrite=overwrite, what="dense model folder") as tmp:
        model.save_pretrained(tmp)
    records = []
    with torch.no_grad():
        for t in all_targets(model, adapter):
            w = t.weight_out_in()
            if t.in_dim == 0:
                w = w.t().contiguous()
                mask_2of4_(w)
                t.set_weight_out_in(w)
            else:
                mask_2of4_(w)
            records.append(LayerRecord(t.name, tuple(t.module.weight.shape), t.in_dim, "2:4",
                                       float((t.module.weight == 0).float().mean())))
    with atomic_output_dir(sparse_dir, overwrite=overwrite, what="2:4 model folder") as tmp:
        model.save_pretrained(tmp)
        Manifest(
            tool="sparse_trt", version=sparse_trt.__version__, method="magnitude (synthetic random weights)",
            method_options={"seed": seed}, pattern="2:4",
            model={"source": "synthetic", "model_type": model.config.model_type, "layers": model.config.num_hidden_layers},
            calibration=None, layers=tuple(records), dtype=str(dtype).removeprefix("torch."),
        ).save(tmp)
    return SynthPair(dense_dir, sparse_dir, int(model.config.num_hidden_layers), sum(p.numel() for p in model.parameters()))


def _random_like(name: str, t: torch.Tensor, g: torch.Generator, std: float) -> torch.Tensor:
    """Norm weights 1, biases 0, everything else N(0, std) (in float32, then cast)."""
    if t.dim() == 1:
        return (torch.zeros if name.endswith("bias") else torch.ones)(t.shape, dtype=t.dtype)
    return (torch.randn(t.shape, generator=g) * std).to(t.dtype)


def write_streamed_checkpoint(config: str | Path | dict[str, Any], out: Path, *, dtype: torch.dtype, seed: int,
                              num_layers: int | None = None, shard_bytes: int = 2 * 1000**3,
                              tokenizer_dir: Path | None = None, overwrite: bool = False) -> int:
    """Write a random dense checkpoint one decoder layer at a time (never holding the model); returns its parameter count.

    The model is built weightless (``meta``); each layer's tensors are drawn, written to a file and
    dropped; the files become HF shards (``model.safetensors.index.json`` when there are several).
    ``tokenizer_dir``: copy that folder's tokenizer so the checkpoint can be calibrated and evaluated.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparse_trt.models.safetensors_io import write_sharded, write_tensors
    from sparse_trt.models.streaming import parameters_on_meta, tied_duplicates

    d = load_config_dict(config)
    d.pop("architectures", None)
    if num_layers is not None:
        d["num_hidden_layers"] = int(num_layers)
    model_type = d.pop("model_type")
    adapter = adapter_for(model_type)
    cfg = AutoConfig.for_model(model_type, **d)
    tok = None
    if tokenizer_dir is not None:  # checked before anything is written
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if len(tok) > cfg.vocab_size:
            raise InputError(
                f"the tokenizer in '{tokenizer_dir}' has {len(tok)} ids, more than the config's vocab_size {cfg.vocab_size}",
                fix="use a preset whose vocabulary fits it (llama-0.5b, llama-1.5b, llama-3b), another tokenizer, or none",
            )
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    std = float(getattr(cfg, "initializer_range", 0.02))
    layers_prefix = adapter.layers_path + "."
    skip = tied_duplicates(model)
    params = 0
    with atomic_output_dir(Path(out), overwrite=overwrite, what="synthetic model folder") as tmp:
        parts_dir = tmp / ".parts"
        parts_dir.mkdir()
        parts = []
        rest = {n: _random_like(n, t, g, std) for n, t in model.state_dict().items()
                if not n.startswith(layers_prefix) and n not in skip}
        parts.append(parts_dir / "rest.safetensors")
        write_tensors({adapter.stored_name(n): t for n, t in rest.items()}, parts[-1])
        params += sum(t.numel() for t in rest.values())
        del rest
        for i, layer in enumerate(adapter.layers(model)):
            prefix = f"{adapter.layers_path}.{i}"
            tensors = {adapter.stored_name(f"{prefix}.{n}"): _random_like(n, t, g, std) for n, t in layer.state_dict().items()}
            parts.append(parts_dir / f"layer-{i:05d}.safetensors")
            write_tensors(tensors, parts[-1])
            params += sum(t.numel() for t in tensors.values())
        write_sharded(parts, tmp, shard_bytes)
        for p in parts:
            p.unlink()
        parts_dir.rmdir()
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
    return params
