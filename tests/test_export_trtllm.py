"""Export to TensorRT-LLM unified checkpoints: names, shapes, splits, 2:4 survival, reference-forward logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from test_export_support import pruned_tiny

from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.export.trtllm import export_trtllm, load_checkpoint, reference_logits
from sparse_trt.export.trtllm.reader import assemble
from sparse_trt.export.trtllm.sharding import Mapping, dup_kv, unshard_qkv

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "opt")
PARALLEL = ((1, 1), (2, 1), (4, 1), (1, 2), (2, 2))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("pruned")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = pruned_tiny(family, root / family)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def hf_logits(pruned):
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([1, 17, 45, 3, 99, 200, 7, 64, 128, 5, 250, 31])
    cache = {}

    def get(family):
        if family not in cache:
            m = AutoModelForCausalLM.from_pretrained(pruned(family)).eval()
            with torch.no_grad():
                cache[family] = m(ids[None]).logits[0]
        return ids, cache[family]

    return get


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tp,pp", PARALLEL)
def test_reference_forward_reproduces_hf_logits(family, tp, pp, pruned, hf_logits, tmp_path):
    if family == "opt" and pp > 1:
        pytest.skip("TensorRT-LLM's OPT model has no pipeline parallelism (refusal tested in test_export_errors)")
    out = tmp_path / "ckpt"
    res = export_trtllm(pruned(family), out, dtype=torch.float32, tp=tp, pp=pp)
    assert sorted(p.name for p in out.glob("rank*.safetensors")) == [f"rank{r}.safetensors" for r in range(tp * pp)]
    assert res.checked_weights > 0
    ids, ref = hf_logits(family)
    got = reference_logits(load_checkpoint(out), ids)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_reference_forward_catches_wrong_fusion_order_and_transpose(pruned, hf_logits, tmp_path):
    """Swapping fc/gate (LLaMA's gate/up naming) or transposing a GPT-2 weight must break the logits."""
    out = tmp_path / "llama"
    export_trtllm(pruned("llama"), out, dtype=torch.float32)
    ids, ref = hf_logits("llama")
    ck = load_checkpoint(out)
    ok = reference_logits(ck, ids)
    r0 = ck.ranks[0]
    r0["transformer.layers.0.mlp.fc.weight"], r0["transformer.layers.0.mlp.gate.weight"] = (
        r0["transformer.layers.0.mlp.gate.weight"], r0["transformer.layers.0.mlp.fc.weight"])
    assert (reference_logits(ck, ids) - ref).abs().max() > 100 * (ok - ref).abs().max()

    out = tmp_path / "gpt2"
    export_trtllm(pruned("gpt2"), out, dtype=torch.float32)
    ids, ref = hf_logits("gpt2")
    ck = load_checkpoint(out)
    w = ck.ranks[0]["transformer.layers.1.attention.dense.weight"]
    ck.ranks[0]["transformer.layers.1.attention.dense.weight"] = w.t().contiguous()
    assert (reference_logits(ck, ids) - ref).abs().max() > 1e-2


def test_llama_names_shapes_and_config(pruned, tmp_path):
    out = tmp_path / "ckpt"
    export_trtllm(pruned("llama"), out, dtype=torch.float16, tp=2, pp=2)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "LlamaForCausalLM"
    assert cfg["dtype"] == "float16"
    assert cfg["mapping"]["world_size"] == 4 and cfg["mapping"]["tp_size"] == 2 and cfg["mapping"]["pp_size"] == 2
    assert cfg["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_size"]) == (4, 2, 16)
    assert cfg["position_embedding_type"] == "rope_gpt_neox"
    # rank = pp_rank * tp + tp_rank; rank 0/1 hold layer 0 + embedding, ranks 2/3 layer 1 + ln_f + lm_head
    r0, r3 = _read(out / "rank0.safetensors"), _read(out / "rank3.safetensors")
    assert "transformer.vocab_embedding.weight" in r0 and "lm_head.weight" not in r0
    assert "lm_head.weight" in r3 and "transformer.ln_f.weight" in r3 and "transformer.vocab_embedding.weight" not in r3
    assert {k.split(".")[2] for k in r0 if k.startswith("transformer.layers.")} == {"0"}
    assert r0["transformer.layers.0.attention.qkv.weight"].shape == ((2 + 1 + 1) * 16, 64)  # 2 q heads, 1 k, 1 v
    assert r0["transformer.layers.0.attention.dense.weight"].shape == (64, 32)
    assert r0["transformer.layers.0.mlp.fc.weight"].shape == (64, 64)
    assert r0["transformer.layers.0.mlp.proj.weight"].shape == (64, 64)
    assert r3["lm_head.weight"].shape == (160, 64)
    assert all(t.dtype == torch.float16 for t in r0.values())
    assert (out / "sparsity.json").is_file() and (out / "tokenizer.json").is_file()


def test_llama_gate_up_naming_and_qkv_order(pruned, tmp_path):
    from safetensors.torch import load_file

    src = load_file(str(pruned("llama") / "model.safetensors"))
    out = tmp_path / "ckpt"
    export_trtllm(pruned("llama"), out, dtype=torch.float32)
    r0 = _read(out / "rank0.safetensors")
    p = "model.layers.1."
    assert torch.equal(r0["transformer.layers.1.mlp.fc.weight"], src[p + "mlp.gate_proj.weight"])
    assert torch.equal(r0["transformer.layers.1.mlp.gate.weight"], src[p + "mlp.up_proj.weight"])
    assert torch.equal(r0["transformer.layers.1.mlp.proj.weight"], src[p + "mlp.down_proj.weight"])
    qkv = torch.cat([src[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
    assert torch.equal(r0["transformer.layers.1.attention.qkv.weight"], qkv)


def test_gpt2_conv1d_is_transposed_and_row_bias_replicated(pruned, tmp_path):
    from safetensors.torch import load_file

    src = load_file(str(pruned("gpt2") / "model.safetensors"))
    out = tmp_path / "ckpt"
    export_trtllm(pruned("gpt2"), out, dtype=torch.float32, tp=2)
    r0, r1 = _read(out / "rank0.safetensors"), _read(out / "rank1.safetensors")
    fc = src["transformer.h.0.mlp.c_fc.weight"].t()  # Conv1D [in, out] -> [out, in]
    assert torch.equal(torch.cat([r0["transformer.layers.0.mlp.fc.weight"], r1["transformer.layers.0.mlp.fc.weight"]]), fc)
    proj = src["transformer.h.0.mlp.c_proj.weight"].t()
    assert torch.equal(torch.cat([r0["transformer.layers.0.mlp.proj.weight"], r1["transformer.layers.0.mlp.proj.weight"]], 1), proj)
    assert torch.equal(r0["transformer.layers.0.mlp.proj.bias"], src["transformer.h.0.mlp.c_proj.bias"])
    assert torch.equal(r0["transformer.layers.0.mlp.proj.bias"], r1["transformer.layers.0.mlp.proj.bias"])
    # per-head QKV split: rank 0 holds heads 0-1 of q, of k and of v
    qkv = src["transformer.h.0.attn.c_attn.weight"].t()
    q, k, v = qkv.split(64)
    assert torch.equal(r0["transformer.layers.0.attention.qkv.weight"], torch.cat([q[:32], k[:32], v[:32]]))


def test_opt_position_offset_and_lm_head(pruned, tmp_path):
    from safetensors.torch import load_file

    src = load_file(str(pruned("opt") / "model.safetensors"))
    out = tmp_path / "ckpt"
    export_trtllm(pruned("opt"), out, dtype=torch.float32)
    r0 = _read(out / "rank0.safetensors")
    assert torch.equal(r0["transformer.position_embedding.weight"], src["model.decoder.embed_positions.weight"][2:])
    assert torch.equal(r0["lm_head.weight"], src["model.decoder.embed_tokens.weight"])  # tied
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "OPTForCausalLM" and cfg["do_layer_norm_before"] is True


@pytest.mark.parametrize("family", FAMILIES)
def test_2of4_survives_in_every_shard(family, pruned, tmp_path):
    tp = 4
    out = tmp_path / "ckpt"
    export_trtllm(pruned(family), out, dtype=torch.float16, tp=tp)
    n = 0
    for r in range(tp):
        for name, t in _read(out / f"rank{r}.safetensors").items():
            if name.startswith("transformer.layers.") and name.endswith(".weight") and t.dim() == 2:
                assert nm_violations(t, NM(2, 4), 1) == 0, (r, name)
                n += 1
    assert n >= 2 * 4 * tp


def test_kv_heads_duplicated_when_tp_exceeds_them(pruned, tmp_path):
    out = tmp_path / "ckpt"
    export_trtllm(pruned("llama"), out, dtype=torch.float32, tp=4)  # 2 KV heads, 4 ranks
    ranks = [_read(out / f"rank{r}.safetensors") for r in range(4)]
    qkv = [r["transformer.layers.0.attention.qkv.weight"] for r in ranks]
    assert all(t.shape == ((1 + 1 + 1) * 16, 64) for t in qkv)
    k = [t[16:32] for t in qkv]
    assert torch.equal(k[0], k[1]) and torch.equal(k[2], k[3]) and not torch.equal(k[0], k[2])
    assert [r["lm_head.weight"].shape[0] for r in ranks] == [80] * 4


def test_vocab_padding(tmp_path):
    out = tmp_path / "ckpt"
    src = pruned_tiny("llama", tmp_path / "odd_vocab", vocab_size=318)
    export_trtllm(src, out, dtype=torch.float32, tp=4)
    heads = [_read(out / f"rank{r}.safetensors")["lm_head.weight"] for r in range(4)]
    assert [h.shape[0] for h in heads] == [80] * 4  # 318 padded to 320
    assert torch.count_nonzero(heads[3][-2:]) == 0
    full = assemble(load_checkpoint(out))
    assert full["lm_head.weight"].shape == (318, 64)


def test_split_helpers_roundtrip():
    torch.manual_seed(0)
    q, k, v = torch.randn(8 * 4, 8), torch.randn(2 * 4, 8), torch.randn(2 * 4, 8)
    for tp in (1, 2, 4, 8):
        pieces = []
        for r in range(tp):
            kk, vv = dup_kv(k, 2, tp).chunk(tp)[r], dup_kv(v, 2, tp).chunk(tp)[r]
            pieces.append(torch.cat([q.chunk(tp)[r], kk, vv]))
        assert torch.equal(unshard_qkv(pieces, 8, 2, 4), torch.cat([q, k, v]))
    m = Mapping(2, 2)
    assert [m.layers(r, 4) for r in range(4)] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert (m.tp_rank(3), m.pp_rank(3)) == (1, 1)


def test_cli_export(pruned, tmp_path):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    out = tmp_path / "ckpt"
    res = CliRunner().invoke(app, ["export", "trtllm", str(pruned("qwen2")), "-o", str(out), "--tp", "2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["tp"] == 2 and summary["pattern"] == "2:4" and summary["checked_weights"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "Qwen2ForCausalLM" and cfg["attn_bias"] is True and cfg["dtype"] == "float16"
    assert "transformer.layers.0.attention.qkv.bias" in _read(out / "rank1.safetensors")
