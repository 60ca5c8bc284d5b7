"""Per-family name maps: HF tensors -> TensorRT-LLM (1.2) unified-checkpoint tensors and config fields.

Every family turns an HF state dict into one ``Converted`` model held *unsharded* in TensorRT-LLM
orientation (linear weights ``[out, in]``; GPT-2's Conv1D ``[in, out]`` weights are transposed
here). ``sharding.py`` then cuts it per rank exactly as TensorRT-LLM's own converters do.

Facts mirrored from TensorRT-LLM 1.2 (``tensorrt_llm/models/{llama,qwen,gpt}/convert.py``,
``examples/models/contrib/opt/convert_checkpoint.py``):

* fused QKV is ``attention.qkv`` = per rank ``[q_r; k_r; v_r]`` along the output dimension;
* LLaMA/Qwen2 GatedMLP: ``mlp.fc`` is HF ``gate_proj`` (the input of the activation), ``mlp.gate``
  is HF ``up_proj`` (the multiplier), ``mlp.proj`` is ``down_proj``;
* GPT-2: ``c_attn``/``c_proj``/``c_fc`` are Conv1D and are transposed;
* OPT: learned positions skip the first 2 rows of ``embed_positions`` (HF's offset).

Adding a family means adding one ``Family`` entry to ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sparse_trt.core.errors import UnsupportedModelError

Getter = Callable[[str], torch.Tensor]
Finder = Callable[[str], "torch.Tensor | None"]


@dataclass
class Linear:
    """One TensorRT-LLM linear, unsharded, weight ``[out, in]``.

    ``kind``: ``col`` (split on dim 0), ``row`` (split on dim 1; bias replicated) or ``qkv`` (per-head
    split of ``parts`` = (q, k, v); KV heads duplicated when tp exceeds them).
    ``sources``: the HF linear(s) the rows come from: one name for col/row, (q, k, v) names for qkv
    (the same name three times when HF already fuses them, as GPT-2's ``c_attn``).
    """

    kind: str
    sources: tuple[str, ...]
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    bias_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@dataclass
class Converted:
    """A whole model in TensorRT-LLM naming, before tensor/pipeline-parallel splitting."""

    config: dict[str, Any]  # TensorRT-LLM config.json fields, without mapping / quantization
    num_heads: int
    num_kv_heads: int
    head_size: int
    layers: list[dict[str, Linear | torch.Tensor]]  # local names ("attention.qkv", "input_layernorm.weight")
    first: dict[str, torch.Tensor] = field(default_factory=dict)  # embeddings (first pp rank)
    last: dict[str, torch.Tensor] = field(default_factory=dict)  # ln_f (last pp rank)
    lm_head: torch.Tensor | None = None  # [vocab, hidden]; padded + column-split on the last pp rank


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]  # HF architectures; TensorRT-LLM's MODEL_MAP takes the same names
    convert: Callable[[dict[str, Any], Getter, Finder, str], Converted]
    pipeline_parallel: bool = True  # TensorRT-LLM's converter for this family supports pp > 1


def _rope(hf: dict[str, Any]) -> tuple[float, dict | None]:
    """rotary base and scaling from either transformers-4 (rope_theta / rope_scaling) or -5 (rope_parameters)."""
    params = hf.get("rope_parameters") or {}
    base = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling")
    if scaling is None and params and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return base, scaling


def _common(hf: dict[str, Any], dtype: str, **kw: Any) -> dict[str, Any]:
    cfg = {
        "architecture": hf["architectures"][0],
        "dtype": dtype,
        "logits_dtype": "float32",
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
    }
    cfg.update(kw)
    return cfg


def _llama_like(hf: dict[str, Any], get: Getter, find: Finder, dtype: str) -> Converted:
    nh = int(hf["num_attention_heads"])
    nkv = int(hf.get("num_key_value_heads") or nh)
    hidden = int(hf["hidden_size"])
    hd = int(hf.get("head_dim") or hidden // nh)
    n_layers = int(hf["num_hidden_layers"])
    rotary_base, rotary_scaling = _rope(hf)
    is_qwen2 = hf.get("model_type") == "qwen2"
    attn_bias = find("model.layers.0.self_attn.q_proj.bias") is not None
    mlp_bias = find("model.layers.0.mlp.gate_proj.bias") is not None
    tie = bool(hf.get("tie_word_embeddings", False))
    extra: dict[str, Any] = {}
    if is_qwen2:
        extra = {"qwen_type": "qwen2"}
    config = _common(
        hf,
        dtype,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=nh,
        num_key_value_heads=nkv,
        head_size=hd,
        intermediate_size=int(hf["intermediate_size"]),
        hidden_act=hf.get("hidden_act", "silu"),
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        position_embedding_type="rope_gpt_neox",
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rotary_base=rotary_base,
        rotary_scaling=rotary_scaling,
        mlp_bias=mlp_bias,
        attn_bias=attn_bias,
        residual_mlp=False,
        tie_word_embeddings=tie,
        **extra,
    )
    layers = []
    for i in range(n_layers):
        p = f"model.layers.{i}."
        q, k, v = (p + f"self_attn.{x}_proj" for x in "qkv")
        layer: dict[str, Linear | torch.Tensor] = {
            "attention.qkv": Linear(
                "qkv", (q, k, v), parts=(get(q + ".weight"), get(k + ".weight"), get(v + ".weight")),
                bias_parts=(get(q + ".bias"), get(k + ".bias"), get(v + ".bias")) if attn_bias else None,
            ),
            "attention.dense": Linear("row", (p + "self_attn.o_proj",), get(p + "self_attn.o_proj.weight"),
                                      find(p + "self_attn.o_proj.bias")),
            "mlp.fc": Linear("col", (p + "mlp.gate_proj",), get(p + "mlp.gate_proj.weight"), find(p + "mlp.gate_proj.bias")),
            "mlp.gate": Linear("col", (p + "mlp.up_proj",), get(p + "mlp.up_proj.weight"), find(p + "mlp.up_proj.bias")),
            "mlp.proj": Linear("row", (p + "mlp.down_proj",), get(p + "mlp.down_proj.weight"), find(p + "mlp.down_proj.bias")),
            "input_layernorm.weight": get(p + "input_layernorm.weight"),
            "post_layernorm.weight": get(p + "post_attention_layernorm.weight"),
        }
        layers.append(layer)
    embed = get("model.embed_tokens.weight")
    lm_head = find("lm_head.weight")
    return Converted(
        config, nh, nkv, hd, layers,
        first={"transformer.vocab_embedding.weight": embed},
        last={"transformer.ln_f.weight": get("model.norm.weight")},
        lm_head=lm_head if lm_head is not None else embed,
    )


def _gpt2(hf: dict[str, Any], get: Getter, find: Finder, dtype: str) -> Converted:
    hidden = int(hf["n_embd"])
    nh = int(hf["n_head"])
    n_layers = int(hf["n_layer"])
    inner = int(hf.get("n_inner") or 4 * hidden)
    config = _common(
        hf,
        dtype,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=nh,
        num_key_value_heads=nh,
        head_size=hidden // nh,
        intermediate_size=inner,
        hidden_act=hf.get("activation_function", "gelu_new"),
        norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        position_embedding_type="learned_absolute",
        max_position_embeddings=int(hf["n_positions"]),
        gpt_variant="gpt2",
        bias=True,
        q_scaling=1.0,
        apply_query_key_layer_scaling=False,
        rotary_pct=1.0,
        rotary_base=10000.0,
        rotary_scaling=None,
    )
    layers = []
    for i in range(n_layers):
        p = f"transformer.h.{i}."
        attn = p + "attn.c_attn"
        w = get(attn + ".weight").t()  # Conv1D [in, 3h] -> [3h, in]
        b = get(attn + ".bias")
        layer: dict[str, Linear | torch.Tensor] = {
            "attention.qkv": Linear("qkv", (attn, attn, attn), parts=tuple(w.split(hidden, 0)),  # type: ignore[arg-type]
                                    bias_parts=tuple(b.split(hidden, 0))),  # type: ignore[arg-type]
            "attention.dense": Linear("row", (p + "attn.c_proj",), get(p + "attn.c_proj.weight").t(), get(p + "attn.c_proj.bias")),
            "mlp.fc": Linear("col", (p + "mlp.c_fc",), get(p + "mlp.c_fc.weight").t(), get(p + "mlp.c_fc.bias")),
            "mlp.proj": Linear("row", (p + "mlp.c_proj",), get(p + "mlp.c_proj.weight").t(), get(p + "mlp.c_proj.bias")),
            "input_layernorm.weight": get(p + "ln_1.weight"),
            "input_layernorm.bias": get(p + "ln_1.bias"),
            "post_layernorm.weight": get(p + "ln_2.weight"),
            "post_layernorm.bias": get(p + "ln_2.bias"),
        }
        layers.append(layer)
    wte = get("transformer.wte.weight")
    lm_head = find("lm_head.weight")
    return Converted(
        config, nh, nh, hidden // nh, layers,
        first={"transformer.vocab_embedding.weight": wte, "transformer.position_embedding.weight": get("transformer.wpe.weight")},
        last={"transformer.ln_f.weight": get("transformer.ln_f.weight"), "transformer.ln_f.bias": get("transformer.ln_f.bias")},
        lm_head=lm_head if lm_head is not None else wte,
    )


def _opt(hf: dict[str, Any], get: Getter, find: Finder, dtype: str) -> Converted:
    hidden = int(hf["hidden_size"])
    nh = int(hf["num_attention_heads"])
    n_layers = int(hf["num_hidden_layers"])
    pre_norm = bool(hf.get("do_layer_norm_before", True))
    config = _common(
        hf,
        dtype,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=nh,
        num_key_value_heads=nh,
        head_size=hidden // nh,
        # TensorRT-LLM's OPT converter omits this (its default is 4 * hidden, true of every released OPT);
        # writing the real ffn_dim keeps models where it differs correct.
        intermediate_size=int(hf.get("ffn_dim") or 4 * hidden),
        hidden_act=hf.get("activation_function", "relu"),
        norm_epsilon=1e-5,
        position_embedding_type="learned_absolute",
        max_position_embeddings=int(hf["max_position_embeddings"]),
        do_layer_norm_before=pre_norm,
    )
    layers = []
    for i in range(n_layers):
        p = f"model.decoder.layers.{i}."
        q, k, v = (p + f"self_attn.{x}_proj" for x in "qkv")
        layer: dict[str, Linear | torch.Tensor] = {
            "attention.qkv": Linear("qkv", (q, k, v), parts=(get(q + ".weight"), get(k + ".weight"), get(v + ".weight")),
                                    bias_parts=(get(q + ".bias"), get(k + ".bias"), get(v + ".bias"))),
            "attention.dense": Linear("row", (p + "self_attn.out_proj",), get(p + "self_attn.out_proj.weight"),
                                      get(p + "self_attn.out_proj.bias")),
            "mlp.fc": Linear("col", (p + "fc1",), get(p + "fc1.weight"), get(p + "fc1.bias")),
            "mlp.proj": Linear("row", (p + "fc2",), get(p + "fc2.weight"), get(p + "fc2.bias")),
            "input_layernorm.weight": get(p + "self_attn_layer_norm.weight"),
            "input_layernorm.bias": get(p + "self_attn_layer_norm.bias"),
            "post_layernorm.weight": get(p + "final_layer_norm.weight"),
            "post_layernorm.bias": get(p + "final_layer_norm.bias"),
        }
        layers.append(layer)
    embed = get("model.decoder.embed_tokens.weight")
    lm_head = find("lm_head.weight")
    if lm_head is None:
        lm_head = embed
    project_in = find("model.decoder.project_in.weight")
    if project_in is not None:  # word_embed_proj_dim != hidden (e.g. opt-350m): fold the projections
        project_out = get("model.decoder.project_out.weight")
        lm_head = (lm_head.float() @ project_out.float()).to(lm_head.dtype)
        embed = (embed.float() @ project_in.float().t()).to(embed.dtype)
    last = {}
    if pre_norm:
        last = {"transformer.ln_f.weight": get("model.decoder.final_layer_norm.weight"),
                "transformer.ln_f.bias": get("model.decoder.final_layer_norm.bias")}
    return Converted(
        config, nh, nh, hidden // nh, layers,
        first={"transformer.vocab_embedding.weight": embed,
               "transformer.position_embedding.weight": get("model.decoder.embed_positions.weight")[2:]},
        last=last,
        lm_head=lm_head,
    )


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral", "qwen2"), ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"), _llama_like),
    Family("gpt2", ("gpt2",), ("GPT2LMHeadModel",), _gpt2),
    # TensorRT-LLM's OPT converter asserts pp_size == 1.
    Family("opt", ("opt",), ("OPTForCausalLM",), _opt, pipeline_parallel=False),
)


def supported_architectures() -> list[str]:
    return [a for f in FAMILIES for a in f.architectures]


def family_for(hf: dict[str, Any], source: str) -> Family:
    arch = (hf.get("architectures") or ["?"])[0]
    model_type = hf.get("model_type", "?")
    for f in FAMILIES:
        if arch in f.architectures and model_type in f.model_types:
            return f
    raise UnsupportedModelError(
        f"model '{source}' ({arch}, model_type '{model_type}') cannot be exported to a TensorRT-LLM checkpoint",
        fix=f"exportable architectures: {', '.join(supported_architectures())}",
    )
