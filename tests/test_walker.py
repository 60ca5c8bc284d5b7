"""The layer walker on tiny models of every family: exactness, untouched modules, modes, resume, atomicity."""

from __future__ import annotations

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file

from sparse_trt.core.errors import InterruptedRun, OutputExistsError, ResumeError
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import NM, Unstructured, nm_violations
from sparse_trt.data.text import parse_source
from sparse_trt.models.adapters import adapter_for, all_targets
from sparse_trt.prune import sequential
from sparse_trt.prune.api import PruneRequest, run_prune
from sparse_trt.prune.verify import verify_dir

CPU = torch.device("cpu")


def _req(model_dir, out, calib_file, **kw):
    base = dict(model=str(model_dir), out=out, method="sparsegpt", pattern=NM(2, 4), calib=parse_source(str(calib_file)),
                nsamples=8, seqlen=32, seed=0, device=CPU)
    base.update(kw)
    return PruneRequest(**base)


def _weights(d):
    return load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_every_family_exact_2of4_and_rest_untouched(family, tiny_dirs, calib_file, tmp_path):
    src = tiny_dirs(family)
    out = tmp_path / "out"
    outcome = run_prune(_req(src, out, calib_file))
    m = Manifest.load(out)
    assert m.method == "sparsegpt" and m.pattern == "2:4" and m.calibration.nsamples == 8
    before, after = _weights(src), _weights(out)
    pruned = {r.name + ".weight": r for r in m.layers}
    assert pruned, "no linears pruned"
    for name, w in after.items():
        if name in pruned:
            rec = pruned[name]
            assert nm_violations(w, NM(2, 4), rec.in_dim) == 0, name
            assert abs(rec.sparsity - 0.5) < 0.01
            assert rec.rel_error is not None and 0 <= rec.rel_error < 1
        elif name in before:
            # embeddings, norms, lm_head, biases: byte-identical
            assert torch.equal(before[name], w), name
    # every decoder-layer linear was a target; GPT-2's Conv1D groups run along dim 0
    if family == "gpt2":
        assert all(r.in_dim == 0 for r in m.layers)
    assert verify_dir(out).ok
    assert outcome.manifest.timings["prune_s"] >= 0


def test_wanda_and_magnitude_and_unstructured(tiny_dirs, calib_jsonl, tmp_path):
    src = tiny_dirs("llama")
    for method, pattern in (("wanda", NM(4, 8)), ("magnitude", Unstructured(0.6)), ("wanda", Unstructured(0.5))):
        out = tmp_path / f"{method}-{pattern}"
        run_prune(_req(src, out, calib_jsonl, method=method, pattern=pattern))
        rep = verify_dir(out)
        assert rep.ok, rep.failures
        m = Manifest.load(out)
        for r in m.layers:
            assert r.sparsity >= pattern.sparsity - 0.02


def test_sparsegpt_layer_error_below_wanda_below_magnitude(tiny_dirs, calib_file, tmp_path):
    src = tiny_dirs("llama")
    errs = {}
    for method in ("sparsegpt", "wanda", "magnitude"):
        out = tmp_path / method
        run_prune(_req(src, out, calib_file, method=method))
        # first layer sees the same inputs for every method: compare its reconstruction errors
        layer0 = [r.rel_error for r in Manifest.load(out).layers if ".layers.0." in r.name]
        errs[method] = sum(layer0) / len(layer0)
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def test_one_pass_equals_chunked_passes(tiny_dirs, calib_file, tmp_path):
    """The single-pass pre-hook mode and the chunked true-sequential mode prune the same way."""
    src = tiny_dirs("llama")
    run_prune(_req(src, tmp_path / "one", calib_file, chunk_samples=8))
    m_one = Manifest.load(tmp_path / "one")
    for chunk in (3, 4):
        out = tmp_path / f"chunked{chunk}"
        run_prune(_req(src, out, calib_file, chunk_samples=chunk))
        a, b = _weights(tmp_path / "one"), _weights(out)
        # layer 0 sees identical inputs: same masks, weights equal up to float summation order
        for k in a:
            if ".layers.0." in k:
                assert torch.equal(a[k] == 0, b[k] == 0), k
                torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        for r1, r2 in zip(m_one.layers, Manifest.load(out).layers, strict=True):
            assert abs(r1.rel_error - r2.rel_error) < 0.1 * r1.rel_error + 1e-3, (r1.name, r1.rel_error, r2.rel_error)


def test_exclude_keeps_layers_dense(tiny_dirs, calib_file, tmp_path):
    src = tiny_dirs("llama")
    out = tmp_path / "ex"
    run_prune(_req(src, out, calib_file, exclude=("*.mlp.down_proj",)))
    m = Manifest.load(out)
    assert not any("down_proj" in r.name for r in m.layers)
    assert "model.layers.0.mlp.down_proj" in m.excluded
    w0, w1 = _weights(src), _weights(out)
    assert torch.equal(w0["model.layers.1.mlp.down_proj.weight"], w1["model.layers.1.mlp.down_proj.weight"])


def test_deterministic_under_seed(tiny_dirs, calib_file, tmp_path):
    src = tiny_dirs("qwen2")
    run_prune(_req(src, tmp_path / "a", calib_file, seed=3))
    run_prune(_req(src, tmp_path / "b", calib_file, seed=3))
    run_prune(_req(src, tmp_path / "c", calib_file, seed=4))
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_is_bit_identical(tiny_dirs, calib_file, tmp_path, interrupt_second_layer):
    src = tiny_dirs("llama")
    ref = tmp_path / "ref"
    run_prune(_req(src, ref, calib_file))

    out = tmp_path / "resumed"
    undo = interrupt_second_layer()
    with pytest.raises(InterruptedRun) as e:
        run_prune(_req(src, out, calib_file))
    assert "--resume" in str(e.value)
    assert not out.exists()
    # a plain re-run refuses to silently discard the progress
    undo()
    with pytest.raises(ResumeError):
        run_prune(_req(src, out, calib_file))
    # resuming with other settings is refused
    with pytest.raises(ResumeError):
        run_prune(_req(src, out, calib_file, seed=9, resume=True))
    outcome = run_prune(_req(src, out, calib_file, resume=True))
    assert outcome.resumed_layers == 1
    a, b = _weights(ref), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / ".resumed.partial").exists()


def test_atomic_output_under_injected_failure(tiny_dirs, calib_file, tmp_path, monkeypatch):
    src = tiny_dirs("llama")
    out = tmp_path / "out"
    run_prune(_req(src, out, calib_file))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputExistsError):
        run_prune(_req(src, out, calib_file, method="magnitude"))

    from sparse_trt.core import manifest as manifest_mod

    def boom(self, directory):
        (directory / "sparsity.json").write_text("{half")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(manifest_mod.Manifest, "save", boom)
    with pytest.raises(OSError):
        run_prune(_req(src, out, calib_file, method="magnitude", overwrite=True))
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert before == after  # the previous OUT is intact
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    assert not leftovers


def test_layer_kwargs_recorded_per_layer(tiny_dirs):
    """Gemma 3 alternates sliding/global attention: each layer keeps its own captured kwargs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs("gemma3"))
    adapter = adapter_for(model.config.model_type)
    ids = torch.randint(3, tiny.VOCAB, (2, 40))
    inps, conv = sequential.capture_inputs(model, adapter, ids, CPU, 2)
    assert inps.shape == (2, 40, 64)
    assert len(conv.kwargs) == 2 and all(isinstance(k, dict) for k in conv.kwargs)
    # replaying the layers on captured inputs reproduces the model's final hidden state
    h = inps
    for i, layer in enumerate(adapter.layers(model)):
        h = sequential.replay_layer(layer, h, conv.kwargs[i], sequential.WalkConfig(
            method=None, options=None, pattern=NM(2, 4), device=CPU, store_device=CPU, chunk_samples=2))  # type: ignore[arg-type]
    ref = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1]
    torch.testing.assert_close(model.model.norm(h), ref, rtol=1e-4, atol=1e-4)


def test_targets_listing(tiny_dirs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs("llama"))
    names = [t.name for t in all_targets(model, adapter_for("llama"))]
    assert len(names) == 14 and "model.layers.0.self_attn.q_proj" in names
    assert not any("embed" in n or "lm_head" in n for n in names)
    json.dumps(names)


def test_dense_inputs_mode_is_exact_and_calibrates_on_unpruned_inputs(tiny_dirs):
    """``true_sequential=False`` (the ablation's ``@dense-inputs``): same exact 2:4, other statistics."""
    from transformers import AutoModelForCausalLM

    from sparse_trt.prune.methods import get_method, parse_options

    spec = get_method("sparsegpt")
    ids = torch.randint(3, tiny.VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    weights = {}
    for seq in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs("llama"))
        adapter = adapter_for("llama")
        cfg = sequential.WalkConfig(method=spec, options=parse_options(spec, {}), pattern=NM(2, 4), device=CPU,
                                    store_device=CPU, chunk_samples=4, true_sequential=seq)
        sequential.prune_model(model, adapter, ids, cfg)
        targets = all_targets(model, adapter)
        assert all(nm_violations(t.weight_out_in(), NM(2, 4)) == 0 for t in targets)
        weights[seq] = {t.name: t.weight_out_in().clone() for t in targets}
    # the first group of each layer sees the same inputs either way in layer 0 ...
    first = "model.layers.0.self_attn.q_proj"
    assert torch.equal(weights[True][first], weights[False][first])
    # ... later linears do not (o_proj is calibrated on dense attention outputs in the ablation)
    assert not torch.equal(weights[True]["model.layers.0.self_attn.o_proj"], weights[False]["model.layers.0.self_attn.o_proj"])
