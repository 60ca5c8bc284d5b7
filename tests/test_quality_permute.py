"""Exact input-channel permutation for N:M (down_proj <- gate/up rows, o_proj <- v_proj rows per KV head)."""

from __future__ import annotations

import pytest
import tiny
import torch
from safetensors.torch import load_file

from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.data.text import parse_source
from sparse_trt.prune.api import PruneRequest, run_prune
from sparse_trt.prune.permute import (
    apply_attn_perm,
    apply_mlp_perm,
    kept_score,
    nm_permutation,
    permutable_consumers,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_permutation_preserves_the_function(family):
    model = tiny.build(family)
    ids = torch.randint(3, tiny.VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    g = torch.Generator().manual_seed(1)
    for layer in model.model.layers:
        kinds = permutable_consumers(layer)
        assert kinds == {"mlp.down_proj": "mlp", "self_attn.o_proj": "attn"}
        apply_mlp_perm(layer, torch.randperm(layer.mlp.down_proj.in_features, generator=g))
        cfg = model.config
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        apply_attn_perm(layer, [torch.randperm(hd, generator=g) for _ in range(cfg.num_key_value_heads)])
    with torch.no_grad():
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, tiny.build(family).model.layers[0].mlp.down_proj.weight)


def test_permutation_raises_kept_importance():
    # Important channels bunched in the same groups of 4: identity wastes them.
    s = torch.ones(8, 16) * 0.01
    s[:, :4] = 1.0
    s[:, 8:12] = 1.0
    perm = nm_permutation(s, 2, 4, trials=256)
    assert perm is not None and sorted(perm.tolist()) == list(range(16))
    assert kept_score(s[:, perm], 2, 4) > kept_score(s, 2, 4) * 1.5
    assert torch.equal(perm, nm_permutation(s, 2, 4, trials=256))  # deterministic
    # Already spread: nothing to gain, identity kept.
    assert nm_permutation(torch.ones(4, 16), 2, 4) is None


def test_walker_with_permutation(tiny_dirs, calib_file, tmp_path, monkeypatch):
    from sparse_trt.prune import experimental, methods

    # RIA (no weight update) isolates the permutation; it is not a registered method (measured worse).
    monkeypatch.setitem(methods._REGISTRY, experimental.RIA.name, experimental.RIA)
    src = tiny_dirs("llama")

    def req(out, **kw):
        base = dict(model=str(src), out=out, method="ria", pattern=NM(2, 4), calib=parse_source(str(calib_file)),
                    nsamples=8, seqlen=32, seed=0, device=CPU, options={"permute": "true"})
        base.update(kw)
        return PruneRequest(**base)

    run_prune(req(tmp_path / "a"))
    run_prune(req(tmp_path / "b", chunk_samples=3))  # chunked passes: same stats, same permutation
    run_prune(req(tmp_path / "plain", options={}))
    wa, wb, wp = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b", "plain"))
    m = Manifest.load(tmp_path / "a")
    for r in m.layers:
        assert nm_violations(wa[r.name + ".weight"], NM(2, 4), r.in_dim) == 0
    assert any(not torch.equal(wa[k], wp[k]) for k in wa if "down_proj" in k)  # the permutation did something
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
