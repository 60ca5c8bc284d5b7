"""Streaming prune: layers read from sharded checkpoints and written straight into output shards.

Bit-identical to the in-memory path on three families (tied embeddings, a renamed head), bf16 too;
the process memory stays below the model's size; resume after an interruption; broken shards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file

from sparse_trt.core.errors import InterruptedRun, ModelLoadError
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import NM
from sparse_trt.data.text import parse_source
from sparse_trt.models.safetensors_io import INDEX, SINGLE, WeightIndex, write_tensors
from sparse_trt.prune.activations import ActivationPlan, ActivationStore, plan_activations
from sparse_trt.prune.api import PruneRequest, run_prune

CPU = torch.device("cpu")


def save_two_shards(family: str, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny model saved as two safetensors shards plus model.safetensors.index.json."""
    model = tiny.build(family).to(dtype)
    model.save_pretrained(folder)  # config, generation config (and a single-file checkpoint, replaced below)
    tiny.tokenizer().save_pretrained(folder)
    tensors = load_file(str(folder / SINGLE))
    (folder / SINGLE).unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        write_tensors({n: tensors[n] for n in part}, folder / fname)
        weight_map.update({n: fname for n in part})
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def out_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = WeightIndex.open(folder)
    return index.read({n: n for n in index.entries})


def req(model, out, calib, **kw):
    base = dict(model=str(model), out=out, method="sparsegpt", pattern=NM(2, 4), calib=parse_source(str(calib)),
                nsamples=4, seqlen=32, seed=0, device=CPU)
    base.update(kw)
    return PruneRequest(**base)


def assert_same_output(a: Path, b: Path) -> None:
    wa, wb = out_weights(a), out_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and torch.equal(wa[k], wb[k]), k
    ma, mb = Manifest.load(a), Manifest.load(b)
    strip = lambda m: [(r.name, r.pattern, r.sparsity, r.rel_error, r.damp) for r in m.layers]  # noqa: E731
    assert strip(ma) == strip(mb)


@pytest.mark.parametrize(("family", "dtype"), [("llama", torch.float32), ("gemma3", torch.float32),
                                               ("gpt_neox", torch.float32), ("llama", torch.bfloat16)])
def test_streamed_equals_in_memory(family, dtype, calib_file, tmp_path):
    """gemma3: tied embeddings; gpt_neox: the head is stored as embed_out; llama bf16: no upcast on the way."""
    src = save_two_shards(family, tmp_path / "src", dtype)
    streamed, whole = tmp_path / "streamed", tmp_path / "whole"
    run_prune(req(src, streamed, calib_file))
    run_prune(req(src, whole, calib_file, streaming=False))
    assert Manifest.load(streamed).memory["streamed"] is True
    assert Manifest.load(whole).memory["streamed"] is False
    assert_same_output(streamed, whole)
    # the streamed folder is an ordinary HF checkpoint
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(streamed)
    assert next(m.parameters()).dtype == dtype


def test_small_shards_index_and_block_method(calib_file, tmp_path):
    """A shard size below one layer: one shard per part, an index, hard links; the block method streams too."""
    src = save_two_shards("llama", tmp_path / "src")
    small, whole = tmp_path / "small", tmp_path / "whole"
    kw = dict(method="sparsegpt-block", options={"block_steps": "2", "block_batch": "2"})
    run_prune(req(src, small, calib_file, shard_bytes=1, **kw))
    run_prune(req(src, whole, calib_file, streaming=False, **kw))
    index = json.loads((small / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 3  # embeddings/norm/head + two decoder layers
    assert not (small / SINGLE).exists()
    assert_same_output(small, whole)


def test_resume_after_interrupt_between_layers(calib_file, tmp_path, interrupt_second_layer):
    src = save_two_shards("gemma3", tmp_path / "src")
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_prune(req(src, ref, calib_file))
    undo = interrupt_second_layer()
    with pytest.raises(InterruptedRun):
        run_prune(req(src, out, calib_file))
    undo()
    partial = out.parent / f".{out.name}.partial"
    assert (partial / "layer-00000.safetensors").is_file() and not (partial / "layer-00001.safetensors").exists()
    outcome = run_prune(req(src, out, calib_file, resume=True))
    assert outcome.resumed_layers == 1
    assert_same_output(out, ref)


def test_missing_and_corrupt_shard_are_named(calib_file, tmp_path):
    src = save_two_shards("llama", tmp_path / "src")
    shard = src / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.unlink()
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors.*missing"):
        run_prune(req(src, tmp_path / "a", calib_file))
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors.*truncated"):
        run_prune(req(src, tmp_path / "b", calib_file))
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelLoadError, match="model-00002-of-00002.safetensors.*corrupt"):
        run_prune(req(src, tmp_path / "c", calib_file))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_activations_on_disk_are_bit_identical(calib_file, tmp_path):
    """A host budget of 1 byte sends activations to memory-mapped files; the result does not change."""
    src = save_two_shards("llama", tmp_path / "src")
    disk, host = tmp_path / "disk", tmp_path / "host"
    run_prune(req(src, disk, calib_file, max_memory=1))
    run_prune(req(src, host, calib_file))
    assert Manifest.load(disk).memory["activations"] == "disk"
    assert Manifest.load(host).memory["activations"] == "host"
    assert_same_output(disk, host)


def test_activation_plan_order(tmp_path):
    cuda = torch.device("cuda")
    assert plan_activations(100, cuda, device_free=1000, host_budget=0, folder=tmp_path).place == "device"
    assert plan_activations(100, cuda, device_free=300, host_budget=100, folder=tmp_path).place == "host"
    assert plan_activations(100, CPU, device_free=0, host_budget=99, folder=tmp_path).place == "disk"
    t = ActivationStore(ActivationPlan("disk", CPU, tmp_path / "acts", 8)).alloc((2, 3), torch.bfloat16)
    t.fill_(1.5)
    assert t.shape == (2, 3) and float(t.sum()) == 9.0
    assert list((tmp_path / "acts").iterdir()) == []  # unlinked at once: nothing left behind


WIDE_CHILD = textwrap.dedent("""
    import json, resource, sys, torch
    from pathlib import Path
    from sparse_trt.core.patterns import NM
    from sparse_trt.data.text import parse_source
    from sparse_trt.prune.api import PruneRequest, run_prune
    import transformers.models.llama.modeling_llama  # imported first: only the prune's own memory counts
    src, out, calib = sys.argv[1:4]
    before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    run_prune(PruneRequest(model=src, out=Path(out), method="wanda", pattern=NM(2, 4), calib=parse_source(calib),
                           nsamples=2, seqlen=16, seed=0, device=torch.device("cpu"), shard_bytes=1))
    # VmHWM: this process's own high-water mark. (ru_maxrss is not: Linux carries the peak of the memory map
    # replaced at exec into it, i.e. the forking parent's, here pytest's after the whole suite.)
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
    print(json.dumps({"before": before, "peak": peak}))
""")


def test_peak_memory_stays_below_the_model(calib_file, tmp_path):
    """A tiny-but-wide model (24 layers, hidden 512, ~400 MB fp32, written layer by layer): the streamed
    prune's peak resident size grows by less than 40% of the model, so the model could not even be
    loaded whole within that ceiling (measured in a fresh subprocess; loading whole grows by more than
    the model)."""
    from sparse_trt.bench.synth import write_streamed_checkpoint

    src = tmp_path / "wide"
    cfg = dict(model_type="llama", hidden_size=512, intermediate_size=2048, num_attention_heads=8,
               num_key_value_heads=8, num_hidden_layers=24, vocab_size=tiny.VOCAB, max_position_embeddings=256,
               tie_word_embeddings=False)
    tok_dir = tmp_path / "tok"
    tiny.tokenizer().save_pretrained(tok_dir)
    write_streamed_checkpoint(cfg, src, dtype=torch.float32, seed=0, shard_bytes=100 * 1000**2, tokenizer_dir=tok_dir)
    model_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert model_bytes > 380e6 and (src / INDEX).is_file()
    run = subprocess.run([sys.executable, "-c", WIDE_CHILD, str(src), str(tmp_path / "out"), str(calib_file)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    m = json.loads(run.stdout.strip().splitlines()[-1])
    grown = m["peak"] - m["before"]
    assert grown < 0.4 * model_bytes, (grown, model_bytes)
    assert Manifest.load(tmp_path / "out").memory["streamed"] is True
    assert len(out_weights(tmp_path / "out")) == len(out_weights(src))


def test_cli_shard_size_and_max_memory(calib_file, tmp_path):
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    src = save_two_shards("llama", tmp_path / "src")
    out = tmp_path / "out"
    base = ["prune", str(src), "-o", str(out), "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "32",
            "--device", "cpu"]
    res = CliRunner().invoke(app, [*base, "--shard-size", "100KB", "--max-memory", "1KB"])
    assert res.exit_code == 0, res.output
    m = Manifest.load(out)
    assert m.memory["activations"] == "disk" and m.memory["streamed"] is True
    assert json.loads((out / INDEX).read_text())["weight_map"]
    res = CliRunner().invoke(app, [*base[:3], str(tmp_path / "bad"), *base[4:], "--shard-size", "lots"])
    assert res.exit_code == 2 and "--shard-size 'lots' is not a size" in res.output


@pytest.mark.parametrize(("family", "tp", "pp"), [("llama", 2, 1), ("gpt2", 1, 2), ("opt", 2, 1)])
def test_streamed_export_equals_whole(family, tp, pp, calib_file, tmp_path):
    """export trtllm per layer and per rank writes the same tensors as converting the whole model first."""
    from sparse_trt.export.trtllm.writer import export_trtllm

    src = save_two_shards(family, tmp_path / "src")
    pruned = tmp_path / "pruned"
    run_prune(req(src, pruned, calib_file, method="wanda", shard_bytes=1))
    a, b = tmp_path / "streamed", tmp_path / "whole"
    ra = export_trtllm(pruned, a, dtype=torch.float16, tp=tp, pp=pp)
    rb = export_trtllm(pruned, b, dtype=torch.float16, tp=tp, pp=pp, streaming=False)
    assert ra.checked_weights == rb.checked_weights > 0
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    for r in range(tp * pp):
        ta, tb = load_file(str(a / f"rank{r}.safetensors")), load_file(str(b / f"rank{r}.safetensors"))
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
