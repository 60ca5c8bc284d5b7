"""sparse-trt recover: masks exactly preserved, loss decreases, bit-identical resume, clear errors (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparse_trt.core.errors import CalibrationError, InputError, InterruptedRun, ManifestError
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import parse_pattern
from sparse_trt.data.text import TextSource, parse_source
from sparse_trt.models.loading import load_model
from sparse_trt.prune.api import PruneRequest, run_prune
from sparse_trt.prune.verify import verify_dir
from sparse_trt.recover.api import RecoverRequest, run_recover
from sparse_trt.recover.masks import SparsityMasks, trainable_parameters
from sparse_trt.recover.train import TrainSettings, distill

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest, and much faster than two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _prune(tiny_dirs, calib_file, tmp_path_factory, family: str, method: str = "magnitude") -> Path:
    out = tmp_path_factory.mktemp(f"pruned_{family}") / "out"
    req = PruneRequest(
        model=str(tiny_dirs(family)), out=out, method=method, pattern=parse_pattern("2:4"),
        calib=TextSource("text", str(calib_file)), nsamples=4, seqlen=32,
    )
    run_prune(req)
    return out


@pytest.fixture(scope="module")
def pruned_llama(tiny_dirs, calib_file, tmp_path_factory) -> Path:
    return _prune(tiny_dirs, calib_file, tmp_path_factory, "llama", "sparsegpt")


def _setup(pruned: Path, teacher: Path):
    student = load_model(str(pruned), dtype=torch.float32)
    teach = load_model(str(teacher), dtype=torch.float32)
    masks = SparsityMasks.from_manifest(student.model, Manifest.load(pruned))
    params = trainable_parameters(student.model, student.adapter.layers(student.model))
    return student, teach, masks, params


def _windows(n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 300, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_masks_exact_every_step_with_weight_decay_and_bf16(pruned_llama, tiny_dirs):
    student, teacher, masks, params = _setup(pruned_llama, tiny_dirs("llama"))
    zeros_before = [(~k).sum().item() for k in masks.keep]
    kept_before = [p.detach().clone() for p in masks.params]
    s = TrainSettings(tokens=6 * 2 * 16, seqlen=16, batch=2, lr=1e-2, warmup=0.0, weight_decay=0.5)
    seen = []

    def check(info):  # after every optimizer step: every pruned weight exactly zero
        seen.append((info.step, masks.violations()))

    res = distill(student.model, teacher.model, _windows(s.windows, 16), params, masks, s, CPU,
                  compute_dtype=torch.bfloat16, progress=check)
    assert res.steps == 6 and [v for _, v in seen] == [0] * 6
    for p, k, z, before in zip(masks.params, masks.keep, zeros_before, kept_before, strict=True):
        assert int((p == 0).sum()) >= z and bool((p[~k] == 0).all())
        assert not torch.equal(p[k], before[k])  # the kept weights did train
    assert all(p.grad is None and not p.requires_grad for _, p in params)


def test_loss_decreases_on_fixed_batch(pruned_llama, tiny_dirs):
    student, teacher, masks, params = _setup(pruned_llama, tiny_dirs("llama"))
    s = TrainSettings(tokens=12 * 2 * 32, seqlen=32, batch=2, lr=3e-3, warmup=0.0, hidden_loss_weight=1.0)
    fixed = _windows(2, 32).repeat(12, 1)  # the same two windows every step
    res = distill(student.model, teacher.model, fixed, params, masks, s, CPU)
    assert res.losses[-1] < 0.5 * res.losses[0], res.losses
    assert masks.violations() == 0


def _req(pruned, teacher, out, calib_file, calib_jsonl, **kw) -> RecoverRequest:
    settings = TrainSettings(**{"tokens": 6 * 2 * 32, "seqlen": 32, "batch": 2, "lr": 3e-4, "weight_decay": 0.01,
                                "checkpoint_every": 2, **kw.pop("settings", {})})
    return RecoverRequest(
        pruned=str(pruned), out=out, teacher=str(teacher), settings=settings,
        data=parse_source(str(calib_file)), eval_data=parse_source(str(calib_jsonl)), eval_windows=2, **kw,
    )


def test_recover_writes_verified_folder_and_resume_is_bit_identical(pruned_llama, tiny_dirs, calib_file, calib_jsonl, tmp_path):
    teacher = tiny_dirs("llama")
    full = run_recover(_req(pruned_llama, teacher, tmp_path / "full", calib_file, calib_jsonl))
    assert verify_dir(full.out).ok and full.violations == 0
    m = Manifest.load(full.out)
    rec = m.recovery
    assert rec is not None and rec.steps == 6 and rec.tokens == 6 * 2 * 32 and rec.teacher == str(teacher)
    assert rec.heldout["after"]["kl"] < rec.heldout["before"]["kl"]
    assert m.quality["perplexity"]["perplexity"] == pytest.approx(rec.heldout["after"]["perplexity"])
    assert m.quality["kl"]["kl"] == rec.heldout["after"]["kl"] and m.quality["kl"]["reference"] == str(teacher)
    assert m.quality["dense_perplexity"]["perplexity"] == pytest.approx(rec.heldout["teacher_perplexity"])
    assert not (tmp_path / ".full.recover").exists()

    calls = {"n": 0}

    def interrupt(info):
        calls["n"] += 1
        if info.step == 5:  # after the checkpoint of step 4
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(InterruptedRun):
        run_recover(_req(pruned_llama, teacher, out, calib_file, calib_jsonl), progress=interrupt)
    assert not out.exists() and (tmp_path / ".resumed.recover" / "state.json").is_file()
    with pytest.raises(Exception, match="--resume"):  # leftover checkpoints are not silently discarded
        run_recover(_req(pruned_llama, teacher, out, calib_file, calib_jsonl))
    steps = []
    resumed = run_recover(_req(pruned_llama, teacher, out, calib_file, calib_jsonl, resume=True),
                          progress=lambda i: steps.append(i.step))
    assert steps == [5, 6] and resumed.record.schedule["resumed_at_step"] == 4
    a, b = load_file(str(full.out / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.record.heldout["after"] == rec.heldout["after"]
    assert not (tmp_path / ".resumed.recover").exists()


def test_resume_with_other_settings_is_refused(pruned_llama, tiny_dirs, calib_file, calib_jsonl, tmp_path):
    out = tmp_path / "o"

    def interrupt(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        run_recover(_req(pruned_llama, tiny_dirs("llama"), out, calib_file, calib_jsonl), progress=interrupt)
    with pytest.raises(InputError, match="different settings.*settings"):
        run_recover(_req(pruned_llama, tiny_dirs("llama"), out, calib_file, calib_jsonl, resume=True,
                         settings={"lr": 1e-4}))


def test_teacher_of_another_architecture_is_refused(pruned_llama, tiny_dirs, calib_file, calib_jsonl, tmp_path):
    with pytest.raises(InputError, match="not the same architecture") as e:
        run_recover(_req(pruned_llama, tiny_dirs("qwen3"), tmp_path / "o", calib_file, calib_jsonl))
    assert "sparse-trt" not in e.value.message and "dense model the pruned folder was made from" in (e.value.fix or "")
    assert not (tmp_path / "o").exists()


def test_dense_model_is_refused(tiny_dirs, calib_file, calib_jsonl, tmp_path):
    with pytest.raises(ManifestError, match="not a sparse_trt-pruned model"):
        run_recover(_req(tiny_dirs("llama"), tiny_dirs("llama"), tmp_path / "o", calib_file, calib_jsonl))


def test_heldout_text_is_refused_for_training(pruned_llama, tiny_dirs, calib_file, tmp_path):
    req = _req(pruned_llama, tiny_dirs("llama"), tmp_path / "o", calib_file, calib_file)
    with pytest.raises(CalibrationError, match="also the held-out"):
        run_recover(req)
    lines = calib_file.read_text().splitlines()
    mixed = tmp_path / "mixed.jsonl"  # another file that contains held-out paragraphs
    mixed.write_text("\n".join(json.dumps({"text": t}) for t in lines[:50] + ["x" * 80]) + "\n")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("x" * 80 + "\n" + "another paragraph that is long enough to be compared with the training text")
    with pytest.raises(CalibrationError, match="1 paragraph"):
        run_recover(_req(pruned_llama, tiny_dirs("llama"), tmp_path / "o", mixed, heldout))


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma3", "opt", "gpt2", "gpt_neox", "phi3"])
def test_every_family(family, tiny_dirs, calib_file, calib_jsonl, tmp_path_factory):
    pruned = _prune(tiny_dirs, calib_file, tmp_path_factory, family)
    out = pruned.parent / "recovered"
    res = run_recover(_req(pruned, tiny_dirs(family), out, calib_file, calib_jsonl,
                           settings={"tokens": 2 * 2 * 32, "checkpoint_every": 0, "lr": 1e-2, "weight_decay": 0.1}))
    assert res.violations == 0 and verify_dir(out).ok
    before = load_file(str(pruned / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    m = Manifest.load(pruned)
    for r in m.layers:
        w0, w1 = before[f"{r.name}.weight"], after[f"{r.name}.weight"]
        assert torch.equal(w1[w0 == 0], torch.zeros_like(w1[w0 == 0]))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cli(pruned_llama, tiny_dirs, calib_file, calib_jsonl, tmp_path):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    out = tmp_path / "rec"
    common = ["--teacher", str(tiny_dirs("llama")), "--data", str(calib_file), "--eval-data", str(calib_jsonl),
              "--tokens", "128", "--seqlen", "32", "--batch", "2", "--eval-windows", "2", "--device", "cpu"]
    r = CliRunner().invoke(app, ["recover", str(pruned_llama), "-o", str(out), "--dtype", "bfloat16",
                                 "--weight-decay", "0.1", *common])
    assert r.exit_code == 0, r.output
    assert "every pruned weight is still zero" in r.output and "KL to teacher" in r.output
    assert verify_dir(out).ok and Manifest.load(out).recovery.schedule["compute_dtype"] == "bfloat16"
    r = CliRunner().invoke(app, ["recover", str(tiny_dirs("llama")), "-o", str(tmp_path / "x"), *common])
    assert r.exit_code == 3 and "prune it first" in r.output
    r = CliRunner().invoke(app, ["recover", str(pruned_llama), "-o", str(out), *common])
    assert r.exit_code == 2 and "already exists" in r.output


def test_linears_kept_dense_train_freely(tiny_dirs, calib_file, calib_jsonl, tmp_path):
    pruned = tmp_path / "pruned"
    run_prune(PruneRequest(model=str(tiny_dirs("llama")), out=pruned, method="magnitude", pattern=parse_pattern("2:4"),
                           calib=TextSource("text", str(calib_file)), nsamples=4, seqlen=32, exclude=("*.mlp.down_proj",)))
    out = tmp_path / "rec"
    res = run_recover(_req(pruned, tiny_dirs("llama"), out, calib_file, calib_jsonl,
                           settings={"tokens": 2 * 2 * 32, "checkpoint_every": 0, "lr": 1e-2}))
    assert res.violations == 0 and verify_dir(out).ok
    before, after = load_file(str(pruned / "model.safetensors")), load_file(str(out / "model.safetensors"))
    down = "model.layers.0.mlp.down_proj.weight"
    assert bool((after[down] != 0).all()) and not torch.equal(before[down], after[down])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(after[q] == 0, before[q] == 0)
