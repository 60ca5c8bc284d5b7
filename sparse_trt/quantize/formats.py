"""The quantization formats we produce, as data: one registry entry per format, no if/elif chains.

Each entry names TensorRT-LLM 1.2's ``quant_algo`` (``tensorrt_llm.quantization.mode.QuantAlgo``),
the storage dtype of quantized weights, the largest representable magnitude (``qmax``: the scale
of a tensor is ``amax / qmax``), the weight granularity, and whether SmoothQuant migrates
activation outliers into the weights first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_trt.core.errors import InputError


@dataclass(frozen=True)
class QuantFormat:
    name: str  # what the user types
    quant_algo: str  # TensorRT-LLM QuantAlgo name, written to the checkpoint's config.json
    weight_dtype: torch.dtype  # storage dtype of the quantized weights in the checkpoint
    qmax: float  # amax / qmax = scale
    per_channel_weights: bool  # one weight scale per output row (else one per tensor)
    smoothquant: bool  # migrate activation outliers into the weights (per input channel)
    kv_cache: tuple[str, ...]  # KV-cache formats TensorRT-LLM builds together with this format
    description: str


@dataclass(frozen=True)
class KVFormat:
    name: str
    quant_algo: str  # TensorRT-LLM kv_cache_quant_algo
    dtype: torch.dtype
    qmax: float
    min_scale: float  # scales are clamped from below (FP8: 1.0, as NVIDIA's exporter does)
    needs: str  # what the engine needs to run it


FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
INT8_MAX = float(torch.iinfo(torch.int8).max)  # 127

FORMATS: dict[str, QuantFormat] = {
    "fp8": QuantFormat(
        "fp8", "FP8", torch.float8_e4m3fn, FP8_MAX, per_channel_weights=False, smoothquant=False, kv_cache=("fp8",),
        description="FP8 E4M3 weights and activations, one static scale per tensor (Ada/Hopper and newer)",
    ),
    "int8-sq": QuantFormat(
        "int8-sq", "W8A8_SQ_PER_CHANNEL", torch.int8, INT8_MAX, per_channel_weights=True, smoothquant=True,
        kv_cache=("int8",),
        description="INT8 SmoothQuant: per-channel INT8 weights, per-tensor static INT8 activations",
    ),
}

KV_FORMATS: dict[str, KVFormat] = {
    "fp8": KVFormat("fp8", "FP8", torch.float8_e4m3fn, FP8_MAX, 1.0, "an FP8 GPU (sm89+) and an FP8 weight format"),
    "int8": KVFormat("int8", "INT8", torch.int8, INT8_MAX, 0.0, "the int8-sq weight format"),
}


def parse_format(text: str) -> QuantFormat:
    try:
        return FORMATS[str(text).strip().lower()]
    except KeyError:
        raise InputError(f"quantization format '{text}' is not supported", fix=f"use --format one of {', '.join(FORMATS)}") from None


def parse_kv_format(text: str | None, fmt: QuantFormat) -> KVFormat | None:
    """The KV-cache format, refused unless TensorRT-LLM builds it together with ``fmt``."""
    if text is None or str(text).strip().lower() in ("", "none", "off"):
        return None
    name = str(text).strip().lower()
    if name not in KV_FORMATS:
        raise InputError(f"KV-cache format '{text}' is not supported", fix=f"use --kv-cache one of {', '.join(KV_FORMATS)}")
    if name not in fmt.kv_cache:
        kv = KV_FORMATS[name]
        raise InputError(
            f"--kv-cache {name} with --format {fmt.name}: an engine with {kv.quant_algo} KV cache needs {kv.needs}",
            fix=f"use --kv-cache {' or '.join(fmt.kv_cache)} with --format {fmt.name}, or leave the KV cache unquantized",
        )
    return KV_FORMATS[name]


# TensorRT-LLM export families whose quantized checkpoints we write (and cross-check with NVIDIA's
# exporter), with the HF linears TensorRT-LLM fuses into one GEMM: members of a group share their
# activation scale, FP8 weight scale and SmoothQuant factors, as the fused GEMM needs.
FUSED_GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "llama": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    # Gemma 3: the same fused QKV and gate/up GatedMLP as LLaMA (TensorRT-LLM's Gemma model).
    "gemma3": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
}


#: HF architecture -> the fused-GEMM layout of its TensorRT-LLM model (a key of FUSED_GROUPS): the families whose
#: quantized checkpoints sparse_trt exports. The exporter's family table (export/trtllm/families.py) must agree;
#: a test holds the two together (this stage sits below export and does not import it).
QUANT_EXPORT_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Gemma3ForCausalLM": "gemma3",
}


def fused_groups(layer_prefix: str, family: str) -> list[tuple[str, ...]]:
    return [tuple(f"{layer_prefix}.{m}" for m in group) for group in FUSED_GROUPS[family]]
