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
* OPT: learned positions skip the first 2 rows of ``embed_positions`` (HF's offset);
* Gemma 3: see ``_gemma3`` (norms stored as ``1 + w``, q/k norms, four norms per layer, the vocab
  embedding split over tp ranks).

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
    # The vocab embedding is split over tp ranks on dim 0 like the head (TensorRT-LLM's use_parallel_embedding),
    # for models whose TensorRT-LLM config forces it at tp > 1 (Gemma); others replicate it.
    parallel_embedding: bool = False


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


def _gated_decoder_linears(p: str, get: Getter, find: Finder, attn_bias: bool) -> dict[str, Linear]:
    """The five linears of a LLaMA-style decoder layer (HF ``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``
    under prefix ``p``) in TensorRT-LLM naming; biases where the checkpoint has them."""
    q, k, v = (p + f"self_attn.{x}_proj" for x in "qkv")
    return {
        "attention.qkv": Linear(
            "qkv", (q, k, v), parts=(get(q + ".weight"), get(k + ".weight"), get(v + ".weight")),
            bias_parts=(get(q + ".bias"), get(k + ".bias"), get(v + ".bias")) if attn_bias else None,
        ),
        "attention.dense": Linear("row", (p + "self_attn.o_proj",), get(p + "self_attn.o_proj.weight"),
                                  find(p + "self_attn.o_proj.bias")),
        "mlp.fc": Linear("col", (p + "mlp.gate_proj",), get(p + "mlp.gate_proj.weight"), find(p + "mlp.gate_proj.bias")),
        "mlp.gate": Linear("col", (p + "mlp.up_proj",), get(p + "mlp.up_proj.weight"), find(p + "mlp.up_proj.bias")),
        "mlp.proj": Linear("row", (p + "mlp.down_proj",), get(p + "mlp.down_proj.weight"), find(p + "mlp.down_proj.bias")),
    }


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
        layer: dict[str, Linear | torch.Tensor] = {
            **_gated_decoder_linears(p, get, find, attn_bias),
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


def _plus_one(t: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorm scale ``1 + w`` as TensorRT-LLM stores it, computed in float32 (cast to the export dtype later)."""
    return t.float() + 1.0


def _gemma3_rope(hf: dict[str, Any]) -> tuple[float, dict | None, float]:
    """(global rotary base, global rotary scaling, local rotary base) from transformers-4 or -5 Gemma 3 configs."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:  # transformers 5: one entry per layer type
        base, scaling = _rope({"rope_parameters": params.get("full_attention") or {"rope_theta": 1_000_000.0}})
        local = params.get("sliding_attention") or {}
        local_base, local_scaling = _rope({"rope_parameters": local or {"rope_theta": 10_000.0}})
    else:  # transformers 4: rope_theta / rope_scaling (global) and rope_local_base_freq
        base, scaling = _rope({"rope_theta": hf.get("rope_theta", 1_000_000.0), "rope_scaling": hf.get("rope_scaling")})
        local_base, local_scaling = float(hf.get("rope_local_base_freq", 10_000.0)), None
    if local_scaling is not None:
        raise UnsupportedModelError(
            f"Gemma 3 model with RoPE scaling {local_scaling} on its sliding-window layers cannot be exported: "
            "TensorRT-LLM's Gemma 3 model scales only the global layers' RoPE",
            fix="export a Gemma 3 checkpoint whose sliding_attention rope_parameters are 'default'",
        )
    return base, scaling, local_base


def _sliding_pattern(hf: dict[str, Any], n_layers: int) -> int:
    """TensorRT-LLM's ``_sliding_window_pattern`` P (layer i is sliding unless (i + 1) % P == 0), checked
    against HF's per-layer ``layer_types`` so that no layer changes between sliding and global attention."""
    types = hf.get("layer_types")
    pattern = hf.get("_sliding_window_pattern") or hf.get("sliding_window_pattern")
    if pattern is None and types:
        full = [i for i, t in enumerate(types) if t == "full_attention"]
        pattern = full[0] + 1 if full else n_layers + 1
    pattern = int(pattern or 6)
    if types:
        want = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
        if list(types)[:n_layers] != want:
            raise UnsupportedModelError(
                f"Gemma 3 model whose layer_types {list(types)} do not follow one sliding-window period ({pattern}) "
                "cannot be exported: TensorRT-LLM's Gemma 3 model chooses sliding or global attention per layer by "
                "(layer + 1) % _sliding_window_pattern",
                fix="export a Gemma 3 model with the periodic layer layout of the released checkpoints",
            )
    return pattern


def _gemma3(hf: dict[str, Any], get: Getter, find: Finder, dtype: str) -> Converted:
    """Gemma 3 text models (HF ``Gemma3ForCausalLM``, model_type ``gemma3_text``) as TensorRT-LLM 1.2's ``GemmaForCausalLM``.

    Facts (TensorRT-LLM ``tensorrt_llm/models/gemma/{config,convert,model}.py`` and
    ``examples/models/core/gemma/convert_checkpoint.py``; NVIDIA ModelOpt 0.47
    ``modelopt/torch/export/{layer_utils,model_config_export,tensorrt_llm_utils}.py``):

    * config: ``architecture`` "Gemma3ForCausalLM" selects the Gemma 3 path of ``GemmaConfig``, which
      reads ``query_pre_attn_scalar``, ``final_logit_softcapping``, ``_sliding_window_pattern``,
      ``rope_local_base_freq`` and ``sliding_window`` (its ``Gemma3ConfigGroup``), plus ``rotary_base``
      (the global layers' base), ``rotary_scaling``, ``attn_bias``, ``mlp_bias``, ``inter_layernorms``
      (true for Gemma 2/3), ``head_size`` (HF ``head_dim``), ``norm_epsilon`` (``rms_norm_eps``).
      There is no attention-logit softcapping for Gemma 3 (only Gemma 2 uses it), so a config with one
      is refused; the attention scale is ``q_scaling = sqrt(query_pre_attn_scalar / head_size)``;
      layer ``i`` uses the sliding window and ``rope_local_base_freq`` unless
      ``(i + 1) % _sliding_window_pattern == 0`` (HF's ``layer_types`` must follow that period).
    * ``hidden_act``: HF's ``hidden_activation`` is ``gelu_pytorch_tanh``; TensorRT-LLM's activation
      table has no such key, and its ``gelu`` *is* the tanh approximation, so "gelu" is written
      (the name its own Gemma converter writes for non-HF checkpoints).
    * ``use_parallel_embedding``: ``GemmaConfig`` forces it to ``tp_size > 1`` whatever the file says,
      so at tp > 1 the vocab embedding is split on dim 0 (rows padded to a multiple of tp, as
      TensorRT-LLM's ``Embedding`` allocates ``ceil(vocab / tp)`` rows per rank).
    * RMSNorm: HF computes ``x * (1 + w)``; TensorRT-LLM's ``RmsNorm`` multiplies by its weight, so
      every norm (input, post-attention, pre/post feed-forward, q/k norms, final) is stored as
      ``w + 1`` (computed in float32, then cast to the export dtype, as ModelOpt does).
    * per layer: ``input_layernorm`` (HF ``input_layernorm``), ``post_layernorm`` (HF
      ``post_attention_layernorm``, applied to the attention output), ``pre_feedforward_layernorm``,
      ``post_feedforward_layernorm``, ``attention.q_layernorm`` / ``attention.k_layernorm`` (HF
      ``self_attn.q_norm`` / ``k_norm``, ``[head_dim]``, replicated over tp); fused ``attention.qkv``
      as for LLaMA; GatedMLP ``mlp.fc`` = ``gate_proj`` (activation input), ``mlp.gate`` = ``up_proj``,
      ``mlp.proj`` = ``down_proj``; no biases.
    * embeddings: stored unscaled (TensorRT-LLM multiplies by ``sqrt(hidden_size)`` itself, as HF's
      scaled embedding does); the head is tied: ``lm_head.weight`` is the embedding table (TensorRT-LLM's
      converter writes it; ModelOpt omits it and lets TensorRT-LLM share the embedding).
    * pipeline parallelism: TensorRT-LLM's Gemma converter supports tensor parallelism only.
    """
    nh = int(hf["num_attention_heads"])
    nkv = int(hf.get("num_key_value_heads") or nh)
    hidden = int(hf["hidden_size"])
    hd = int(hf.get("head_dim") or hidden // nh)
    n_layers = int(hf["num_hidden_layers"])
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act != "gelu_pytorch_tanh":
        raise UnsupportedModelError(f"Gemma 3 model with hidden_activation '{act}' cannot be exported: TensorRT-LLM's "
                                    "Gemma MLP runs the tanh-approximated GELU", fix="export a model using gelu_pytorch_tanh")
    if hf.get("attn_logit_softcapping") is not None:
        raise UnsupportedModelError(
            f"Gemma 3 model with attn_logit_softcapping={hf['attn_logit_softcapping']} cannot be exported: TensorRT-LLM "
            "applies attention-logit softcapping to Gemma 2 only", fix="export a model without attention softcapping")
    rotary_base, rotary_scaling, local_base = _gemma3_rope(hf)
    attn_bias = bool(hf.get("attention_bias", False))
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
        hidden_act="gelu",
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        position_embedding_type="rope_gpt_neox",
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        rotary_base=rotary_base,
        rotary_scaling=rotary_scaling,
        attn_bias=attn_bias,
        mlp_bias=False,
        inter_layernorms=True,
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", hd),
        final_logit_softcapping=hf.get("final_logit_softcapping"),
        _sliding_window_pattern=_sliding_pattern(hf, n_layers),
        rope_local_base_freq=local_base,
        sliding_window=int(hf.get("sliding_window") or 4096),
    )
    layers = []
    for i in range(n_layers):
        p = f"model.layers.{i}."
        layer: dict[str, Linear | torch.Tensor] = {
            **_gated_decoder_linears(p, get, find, attn_bias),
            "input_layernorm.weight": _plus_one(get(p + "input_layernorm.weight")),
            "post_layernorm.weight": _plus_one(get(p + "post_attention_layernorm.weight")),
            "pre_feedforward_layernorm.weight": _plus_one(get(p + "pre_feedforward_layernorm.weight")),
            "post_feedforward_layernorm.weight": _plus_one(get(p + "post_feedforward_layernorm.weight")),
            "attention.q_layernorm.weight": _plus_one(get(p + "self_attn.q_norm.weight")),
            "attention.k_layernorm.weight": _plus_one(get(p + "self_attn.k_norm.weight")),
        }
        layers.append(layer)
    embed = get("model.embed_tokens.weight")
    lm_head = find("lm_head.weight")
    return Converted(
        config, nh, nkv, hd, layers,
        first={"transformer.vocab_embedding.weight": embed},
        last={"transformer.ln_f.weight": _plus_one(get("model.norm.weight"))},
        lm_head=lm_head if lm_head is not None else embed,
        parallel_embedding=True,
    )


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral", "qwen2"), ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"), _llama_like),
    Family("gpt2", ("gpt2",), ("GPT2LMHeadModel",), _gpt2),
    # TensorRT-LLM's OPT converter asserts pp_size == 1.
    Family("opt", ("opt",), ("OPTForCausalLM",), _opt, pipeline_parallel=False),
    # TensorRT-LLM's Gemma converter builds tp-only mappings ("no pipeline parallelism yet for Gemma").
    Family("gemma3", ("gemma3_text",), ("Gemma3ForCausalLM",), _gemma3, pipeline_parallel=False),
)


def supported_architectures() -> list[str]:
    return [a for f in FAMILIES for a in f.architectures]


def with_architecture(hf: dict[str, Any]) -> dict[str, Any]:
    """``hf`` itself, or, when its ``architectures`` is missing (a config.json written by hand or by a converter),
    a copy naming the architecture of its ``model_type`` (each family lists them in the same order)."""
    if hf.get("architectures"):
        return hf
    for f in FAMILIES:
        if hf.get("model_type") in f.model_types and len(f.model_types) == len(f.architectures):
            return {**hf, "architectures": [f.architectures[f.model_types.index(hf["model_type"])]]}
    return hf


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
