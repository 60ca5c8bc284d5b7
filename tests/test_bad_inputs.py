"""Hostile and careless inputs across the commands, as one table.

Each row: the command line, the exit code (from the one table in core/errors.py), a phrase the message
must contain, and what must / must not exist afterwards. Paths in a row are templates:
``{src}`` a tiny LLaMA folder (not a tool output), ``{pruned}`` a pruned copy of it (shared, never
modified), ``{calib}`` a calibration text, ``{t}`` the row's own scratch folder (also the working folder).
A row's ``setup`` prepares ``{t}`` (a copy of a pruned folder with a broken manifest, a stale temp...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tiny
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sparse_trt.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dirs, calib_file):
    """Module workspace: a tiny model, a pruned copy (magnitude 2:4) and the calibration file, built once."""
    root = tmp_path_factory.mktemp("bad_inputs")
    src = tiny_dirs("llama")
    pruned = root / "pruned"
    res = runner.invoke(app, ["prune", str(src), "-o", str(pruned), "--calib", str(calib_file), "--nsamples", "4",
                              "--seqlen", "32", "--device", "cpu", "--method", "magnitude"])
    assert res.exit_code == 0, res.output
    return {"src": str(src), "pruned": str(pruned), "calib": str(calib_file), "root": root}


def P(*extra: str, src: str = "{src}", out: str = "{t}/o") -> list[str]:
    return ["prune", src, "-o", out, "--calib", "{calib}", "--nsamples", "4", "--seqlen", "32", "--device", "cpu", *extra]


# ----------------------------------------------------------------------------------------- setups
def copy_pruned(name: str = "p") -> Callable[[Path, dict], None]:
    def setup(t: Path, w: dict) -> None:
        shutil.copytree(w["pruned"], t / name)
    return setup


def edit_manifest(fn: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    def setup(t: Path, w: dict) -> None:
        copy_pruned()(t, w)
        p = t / "p" / "sparsity.json"
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
    return setup


def write(rel: str, text: str) -> Callable[[Path, dict], None]:
    def setup(t: Path, w: dict) -> None:
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)
    return setup


def model_copy(edit_config: Callable[[dict], None] | None = None, name: str = "m") -> Callable[[Path, dict], None]:
    def setup(t: Path, w: dict) -> None:
        shutil.copytree(w["src"], t / name)
        if edit_config is not None:
            p = t / name / "config.json"
            cfg = json.loads(p.read_text())
            edit_config(cfg)
            p.write_text(json.dumps(cfg))
    return setup


def nan_weight(t: Path, w: dict) -> None:
    model_copy()(t, w)
    sd = load_file(str(t / "m" / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 3] = float("nan")
    save_file(sd, str(t / "m" / "model.safetensors"), metadata={"format": "pt"})


def break_pattern(t: Path, w: dict) -> None:
    copy_pruned()(t, w)
    sd = load_file(str(t / "p" / "model.safetensors"))
    sd["model.layers.1.mlp.down_proj.weight"][0, 0:4] = 1.0
    save_file(sd, str(t / "p" / "model.safetensors"), metadata={"format": "pt"})


def drop_weight(t: Path, w: dict) -> None:
    copy_pruned()(t, w)
    sd = load_file(str(t / "p" / "model.safetensors"))
    del sd["model.layers.0.mlp.gate_proj.weight"]
    save_file(sd, str(t / "p" / "model.safetensors"), metadata={"format": "pt"})


def truncate_weights(t: Path, w: dict) -> None:
    copy_pruned()(t, w)
    f = t / "p" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def dense_labelled_sparse(t: Path, w: dict) -> None:
    """A dense model with a manifest that claims 2:4 and lists no layers (the issue's first finding)."""
    model_copy(name="p")(t, w)
    d = json.loads((Path(w["pruned"]) / "sparsity.json").read_text())
    d["layers"] = []
    (t / "p" / "sparsity.json").write_text(json.dumps(d))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def pickle_bomb(t: Path, w: dict) -> None:
    import pickle

    model_copy()(t, w)
    (t / "m" / "model.safetensors").unlink()
    (t / "m" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Payload()}))


def _interrupt(t: Path, w: dict, src: str) -> None:
    """Prune ``src`` into {t}/o, interrupted after its first layer (progress in {t}/.o.partial)."""
    from sparse_trt.prune import sequential

    real, calls = sequential.prune_layer, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    sequential.prune_layer = interrupted
    try:
        res = invoke(P(src=src), t, w)
    finally:
        sequential.prune_layer = real
    assert res.exit_code == 130 and (t / ".o.partial").is_dir(), res.output


def interrupted_run(then: Callable[[Path, dict], None] | None = None) -> Callable[[Path, dict], None]:
    """{t}/m, and a prune of it into {t}/o interrupted after its first layer (progress in {t}/.o.partial)."""
    def setup(t: Path, w: dict) -> None:
        model_copy()(t, w)
        _interrupt(t, w, "{t}/m")
        if then is not None:
            then(t, w)
    return setup


def shared_interrupted_run(then: Callable[[Path, dict], None] | None = None) -> Callable[[Path, dict], None]:
    """Like ``interrupted_run`` for the module's model ``{src}``: the progress is made once and copied."""
    def setup(t: Path, w: dict) -> None:
        tpl = Path(w["root"]) / "interrupted"
        if not tpl.is_dir():
            tpl.mkdir()
            _interrupt(tpl, w, "{src}")
        shutil.copytree(tpl / ".o.partial", t / ".o.partial")
        if then is not None:
            then(t, w)
    return setup


def replace_model_weights(t: Path, w: dict) -> None:
    tiny.build("llama", seed=7).save_pretrained(t / "m")  # same path, same config, other weights


def corrupt_layer_file(t: Path, w: dict) -> None:
    files = sorted((t / ".o.partial").glob("layer*00000.safetensors"))
    assert files, list((t / ".o.partial").iterdir())
    files[0].write_bytes(b"\x10\x00\x00\x00garbage")


def stale_tmp(t: Path, w: dict) -> None:
    (t / ".o.tmp-dead1").mkdir()
    (t / ".o.tmp-dead1" / "model.safetensors").write_bytes(b"x" * 1000)


def signal_in_second_layer(sig: int) -> Callable[[Path, dict], None]:
    """Make the walker's second layer deliver ``sig`` to this process (Ctrl-C / SIGTERM mid-run)."""
    def setup(t: Path, w: dict) -> None:
        from sparse_trt.prune import sequential

        real, calls = sequential.prune_layer, {"n": 0}
        # Ctrl-C as a terminal delivers it: Python's KeyboardInterrupt handler. A test run started as a
        # background job of a non-interactive shell inherits SIGINT *ignored*, and Python then installs no
        # handler, so the signal would be dropped and the prune would finish (exit 0).
        old_int = signal.signal(signal.SIGINT, signal.default_int_handler)

        def signalled(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), sig)
            return real(*a, **k)

        def restore() -> None:
            sequential.prune_layer = real
            signal.signal(signal.SIGINT, old_int)

        w["_restore"] = restore
        sequential.prune_layer = signalled
    return setup


def fail_in_second_layer(t: Path, w: dict) -> None:
    """A failure that is not an interruption, after the first layer's progress was saved."""
    from sparse_trt.core.errors import NumericalError
    from sparse_trt.prune import sequential

    real, calls = sequential.prune_layer, {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise NumericalError("Hessian of layer 1 is not positive definite (injected)", fix="raise damp")
        return real(*a, **k)

    w["_restore"] = lambda: setattr(sequential, "prune_layer", real)
    sequential.prune_layer = failing


def hold_lock(t: Path, w: dict) -> None:
    """Another process holds the lock on {t}/o (as a running prune would)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(t / ".o.lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    w["_restore"] = lambda: (proc.kill(), proc.wait())
    w["_pid"] = proc.pid


def home_here(t: Path, w: dict) -> None:
    (t / "home").mkdir()
    (t / "home" / "notes.txt").write_text("mine")
    w["_env"] = {"HOME": str(t / "home")}


def nested_input(t: Path, w: dict) -> None:
    (t / "models").mkdir()
    shutil.copytree(w["src"], t / "models" / "m")
    (t / "models" / "models-note.txt").write_text("x")


# ----------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]
    code: int
    phrase: str
    exists: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None


NO_OUT = ("o", ".o.partial", ".o.lock")

ROWS = [
    # ---- prune: options
    Row("pattern-4:2", P("--pattern", "4:2"), 2, "4:2", absent=NO_OUT),
    Row("pattern-0:4", P("--pattern", "0:4"), 2, "0:4", absent=NO_OUT),
    Row("pattern-abc", P("--pattern", "abc"), 2, "abc", absent=NO_OUT),
    Row("pattern-1.5", P("--pattern", "1.5"), 2, "outside (0, 1)", absent=NO_OUT),
    Row("pattern-2:7", P("--pattern", "2:7"), 2, "not divisible by M=7", absent=NO_OUT),
    Row("pattern-tiny-fraction", P("--pattern", "0.0001"), 2, "would prune nothing", absent=NO_OUT),
    Row("nsamples-0", P("--nsamples", "0"), 2, "nsamples", absent=NO_OUT),
    Row("seqlen-too-long", P("--seqlen", "100000"), 2, "exceeds the model's context of 256", absent=NO_OUT),
    Row("method-unknown", P("--method", "obs"), 2, "method 'obs' is unknown", absent=NO_OUT),
    Row("opt-unknown", P("--opt", "bogus=1"), 2, "not an option of method 'sparsegpt'", absent=NO_OUT),
    Row("opt-not-number", P("--opt", "damp=abc"), 2, "damp", absent=NO_OUT),
    Row("opt-no-equals", P("--opt", "damp"), 2, "not KEY=VALUE", absent=NO_OUT),
    Row("opt-damp-inf", P("--opt", "damp=inf"), 2, "not a valid finite float", absent=NO_OUT),
    Row("opt-damp-nan", P("--opt", "damp=nan"), 2, "not a valid finite float", absent=NO_OUT),
    Row("device-tpu", P("--device", "tpu"), 2, "device 'tpu'", absent=NO_OUT),
    Row("dtype-int3", P("--dtype", "int3"), 2, "dtype 'int3'", absent=NO_OUT),
    Row("chunk-samples-0", P("--chunk-samples", "0"), 2, "--chunk-samples 0 must be at least 1", absent=NO_OUT),
    Row("chunk-samples-neg", P("--chunk-samples", "-1"), 2, "--chunk-samples -1 must be at least 1", absent=NO_OUT),
    Row("exclude-typo", P("--exclude", "*.down_projj"), 2, "matches no prunable linear", absent=NO_OUT),
    Row("exclude-everything", P("--exclude", "*"), 2, "every prunable linear is excluded", absent=NO_OUT),
    Row("missing-required-out", ["prune", "{src}"], 2, "Missing option", absent=NO_OUT),
    # ---- prune: models and data
    Row("model-missing", P(src="{t}/missing"), 2, "does not exist", absent=NO_OUT),
    Row("model-empty-folder", P(src="{t}/e"), 2, "no config.json", absent=NO_OUT, setup=lambda t, w: (t / "e").mkdir()),
    Row("model-is-file", P(src="{t}/f.txt"), 2, "is a file", absent=NO_OUT, setup=write("f.txt", "x")),
    Row("model-unsupported", P(src="{t}/m"), 2, "not supported", absent=NO_OUT,
        setup=model_copy(lambda c: c.update(model_type="bert"))),
    Row("model-remote-code", P(src="{t}/m"), 2, "--trust-remote-code", absent=NO_OUT,
        setup=model_copy(lambda c: c.update(auto_map={"AutoModelForCausalLM": "x.XForCausalLM"}))),
    Row("model-pickle-payload", P(src="{t}/m"), 2, "could not load model weights", absent=NO_OUT + ("pwned",),
        setup=pickle_bomb),
    Row("model-gguf-missing", P(src="{t}/model.gguf"), 2, "GGUF file", absent=NO_OUT),
    Row("model-nan", P(src="{t}/m"), 5, "NaN", absent=NO_OUT, setup=nan_weight),
    Row("calib-missing", P("--calib", "{t}/nope.txt"), 2, "nope.txt", absent=NO_OUT),
    Row("calib-too-short", P("--calib", "{t}/short.txt"), 2, "need 128", absent=NO_OUT,
        setup=write("short.txt", "a few words only")),
    Row("calib-bad-jsonl", P("--calib", "{t}/bad.jsonl"), 2, "line 1", absent=NO_OUT, setup=write("bad.jsonl", '{"txt": 1}\n')),
    # ---- prune: output locations and --overwrite
    Row("out-under-file", P(out="{t}/f.txt/sub"), 2, "is a file, not a folder", absent=("f.txt/sub",), setup=write("f.txt", "x")),
    Row("out-in-proc", P(out="/proc/sparse_trt_x"), 2, "cannot be", absent=NO_OUT),
    Row("out-exists", P(), 2, "already exists", exists=("o/keep.txt",), setup=write("o/keep.txt", "precious")),
    Row("overwrite-unrelated", P("--overwrite"), 2, "not written by sparse-trt", exists=("o/keep.txt",),
        setup=write("o/keep.txt", "precious")),
    Row("overwrite-symlink", P("--overwrite", out="{t}/link"), 2, "is a symbolic link", exists=("real/keep.txt", "link"),
        setup=lambda t, w: (write("real/keep.txt", "x")(t, w), (t / "link").symlink_to(t / "real"))),
    Row("overwrite-file", P("--overwrite", out="{t}/f.txt"), 2, "exists and is not a folder", exists=("f.txt",),
        setup=write("f.txt", "x")),
    Row("overwrite-cwd", P("--overwrite", out="."), 2, "the working folder", exists=("keep.txt",),
        setup=write("keep.txt", "precious")),
    Row("overwrite-parent-of-cwd", P("--overwrite", out=".."), 2, "a parent of the working folder"),
    Row("overwrite-root", P("--overwrite", out="/"), 2, "the file-system root"),
    Row("overwrite-home", P("--overwrite", out="{t}/home"), 2, "your home folder", exists=("home/notes.txt",),
        setup=home_here),
    Row("overwrite-input", P("--overwrite", src="{t}/m", out="{t}/m"), 2, "this command's input",
        exists=("m/config.json",), setup=model_copy()),
    Row("overwrite-parent-of-input", P("--overwrite", src="{t}/models/m", out="{t}/models"), 2,
        "contains this command's input", exists=("models/m/config.json",), setup=nested_input),
    Row("overwrite-empty-folder", P("--overwrite", "--method", "magnitude"), 0, "pruned 14 linears", exists=("o/sparsity.json", "o/.sparse_trt"),
        absent=(".o.partial", ".o.lock"), setup=lambda t, w: (t / "o").mkdir()),
    Row("overwrite-own-output", P("--overwrite", "--method", "magnitude"), 0, "pruned 14 linears",
        exists=("o/sparsity.json",), absent=("o/keep.txt", ".o.partial"), setup=copy_pruned("o")),
    Row("nested-new-out", P("--method", "magnitude", out="{t}/a/b/o"), 0, "pruned 14 linears", exists=("a/b/o/sparsity.json",),
        absent=("a/b/.o.lock", "a/b/.o.partial")),
    Row("failed-run-removes-new-parents", P("--pattern", "0.0001", out="{t}/new/deep/o"), 2, "would prune nothing",
        absent=("new",)),
    Row("locked-by-other-run", P(), 2, "is being written by another sparse-trt run (PID", absent=("o", ".o.partial"),
        setup=hold_lock),
    Row("stale-tmp-named", P("--method", "magnitude"), 0, "left by an earlier run that was killed", exists=("o/sparsity.json", ".o.tmp-dead1"),
        setup=stale_tmp),
    Row("stale-tmp-removed", P("--overwrite", "--method", "magnitude"), 0, "removing", exists=("o/sparsity.json",), absent=(".o.tmp-dead1",),
        setup=stale_tmp),
    # ---- prune: interruption and resume
    Row("ctrl-c-keeps-progress", P(), 130, "--resume", exists=(".o.partial/state.json",), absent=("o", ".o.lock"),
        setup=signal_in_second_layer(signal.SIGINT)),
    Row("sigterm-keeps-progress", P(), 143, "terminated", exists=(".o.partial/state.json",), absent=("o", ".o.lock"),
        setup=signal_in_second_layer(signal.SIGTERM)),
    Row("failure-cleans-progress", P(), 5, "injected", absent=("o", ".o.partial", ".o.lock"), setup=fail_in_second_layer),
    Row("partial-without-resume", P(), 2, "an interrupted run left progress", exists=(".o.partial",),
        absent=("o",), setup=shared_interrupted_run()),
    Row("resume-model-changed", P("--resume", src="{t}/m"), 2, "the model's files changed", exists=(".o.partial",),
        absent=("o",), setup=interrupted_run(replace_model_weights)),
    Row("resume-other-options", P("--resume", "--method", "wanda"), 2, "differs (method)", exists=(".o.partial",),
        absent=("o",), setup=shared_interrupted_run()),
    Row("resume-corrupt-layer-file", P("--resume"), 2, "is unreadable", exists=(".o.partial",),
        absent=("o",), setup=shared_interrupted_run(corrupt_layer_file)),
    Row("resume-completes", P("--resume"), 0, "resumed after 1 layers", exists=("o/sparsity.json",),
        absent=(".o.partial",), setup=shared_interrupted_run()),
    # ---- verify
    Row("verify-ok", ["verify", "{pruned}"], 0, "every target linear covered"),
    Row("verify-missing", ["verify", "{t}/missing"], 2, "does not exist"),
    Row("verify-file", ["verify", "{t}/f.txt"], 2, "is not a folder", setup=write("f.txt", "x")),
    Row("verify-dense-no-manifest", ["verify", "{src}"], 3, "not a sparse_trt-pruned model directory"),
    Row("verify-no-layers", ["verify", "{t}/p"], 3, "does not cover the model", setup=dense_labelled_sparse),
    Row("verify-one-layer-missing", ["verify", "{t}/p"], 3, "missing from it",
        setup=edit_manifest(lambda d: d["layers"].pop(3))),
    Row("verify-foreign-layer", ["verify", "{t}/p"], 3, "not linears of this model",
        setup=edit_manifest(lambda d: d["layers"].append({**d["layers"][0], "name": "model.layers.9.mlp.x"}))),
    Row("verify-nothing-pruned", ["verify", "{t}/p"], 3, "no linear in it carries a pattern",
        setup=edit_manifest(lambda d: [r.update(pattern=None) for r in d["layers"]])),
    Row("verify-pattern-3:2", ["verify", "{t}/p"], 3, "'3:2' is invalid", setup=edit_manifest(lambda d: d.update(pattern="3:2"))),
    Row("verify-layer-pattern-bad", ["verify", "{t}/p"], 3, "is invalid",
        setup=edit_manifest(lambda d: d["layers"][0].update(pattern="9:4"))),
    Row("verify-corrupt-json", ["verify", "{t}/p"], 3, "sparsity.json", setup=lambda t, w: (copy_pruned()(t, w),
        (t / "p" / "sparsity.json").write_text("{not json"))),
    Row("verify-unknown-field", ["verify", "{t}/p"], 3, "unknown field", setup=edit_manifest(lambda d: d.update(surprise=1))),
    Row("verify-schema-version", ["verify", "{t}/p"], 3, "schema_version", setup=edit_manifest(lambda d: d.update(schema_version=99))),
    Row("verify-truncated-weights", ["verify", "{t}/p"], 3, "unreadable", setup=truncate_weights),
    Row("verify-violation", ["verify", "{t}/p"], 4, "violate their pattern", setup=break_pattern),
    Row("verify-violation-json", ["verify", "{t}/p", "--json"], 4, '"ok": false', setup=break_pattern),
    Row("verify-in-dim-wrong", ["verify", "{t}/p"], 3, "disagree with the weights",
        setup=edit_manifest(lambda d: d["layers"][2].update(in_dim=0))),
    Row("verify-shape-wrong", ["verify", "{t}/p"], 3, "shape (64, 64) != manifest (64, 32)",
        setup=edit_manifest(lambda d: d["layers"][0].update(shape=[64, 32]))),
    Row("verify-weight-missing", ["verify", "{t}/p"], 3, "weight missing from the checkpoint", setup=drop_weight),
    # ---- eval: outputs and inputs checked before any work
    Row("eval-max-windows-0", ["eval", "{pruned}", "--max-windows", "0", "--device", "cpu"], 2, "--max-windows 0"),
    Row("eval-json-dir", ["eval", "{pruned}", "--json", "{t}/d", "--device", "cpu"], 2, "is a folder",
        setup=lambda t, w: (t / "d").mkdir()),
    Row("eval-json-under-file", ["eval", "{pruned}", "--json", "{t}/f.txt/x.json", "--device", "cpu"], 2,
        "is a file, not a folder", setup=write("f.txt", "x")),
    Row("eval-corrupt-manifest", ["eval", "{t}/p", "--device", "cpu", "--seqlen", "32"], 3, "sparsity.json",
        setup=lambda t, w: (copy_pruned()(t, w), (t / "p" / "sparsity.json").write_text("{not json"))),
    Row("eval-data-missing", ["eval", "{pruned}", "--data", "{t}/nope.txt", "--device", "cpu"], 2, "nope.txt"),
    Row("eval-seqlen-too-long", ["eval", "{pruned}", "--seqlen", "100000", "--data", "{calib}", "--device", "cpu",
                                 "--no-record"], 2, "exceeds the model's context"),
    # ---- export: nothing verified, not pruned, --overwrite safety
    Row("export-dense-labelled-2of4", ["export", "trtllm", "{t}/p", "-o", "{t}/ck"], 3, "no N:M linear",
        absent=("ck",), setup=dense_labelled_sparse),
    Row("export-not-pruned", ["export", "trtllm", "{src}", "-o", "{t}/ck"], 2, "has no sparsity.json", absent=("ck",)),
    Row("export-overwrite-unrelated", ["export", "trtllm", "{pruned}", "-o", "{t}/ck", "--overwrite"], 2,
        "not written by sparse-trt", exists=("ck/keep.txt",), setup=write("ck/keep.txt", "precious")),
    Row("export-ok-then-replaced", ["export", "trtllm", "{pruned}", "-o", "{t}/ck", "--overwrite"], 0, "",
        exists=("ck/config.json", "ck/rank0.safetensors", "ck/.sparse_trt"), setup=lambda t, w: (t / "ck").mkdir()),
    # ---- plan: budgets and the output file
    Row("plan-budget-nan", ["plan", "{src}", "-o", "{t}/plan.json", "--budget-ppl", "+nan%"], 2, "not a finite percentage",
        absent=("plan.json",)),
    Row("plan-budget-inf", ["plan", "{src}", "-o", "{t}/plan.json", "--budget-ppl", "+inf%"], 2, "not a finite percentage",
        absent=("plan.json",)),
    Row("plan-budget-text", ["plan", "{src}", "-o", "{t}/plan.json", "--budget-ppl", "lots"], 2, "is not a percentage",
        absent=("plan.json",)),
    Row("plan-budget-and-keep", ["plan", "{src}", "-o", "{t}/plan.json", "--budget-ppl", "5", "--keep-dense", "2"], 2,
        "exactly one", absent=("plan.json",)),
    Row("plan-overwrite-unrelated-file", ["plan", "{src}", "-o", "{t}/notes.json", "--budget-ppl", "5", "--overwrite"], 2,
        "not written by sparse-trt", exists=("notes.json",), setup=write("notes.json", '{"mine": true}')),
    Row("plan-out-exists", ["plan", "{src}", "-o", "{t}/notes.json", "--budget-ppl", "5"], 2, "already exists",
        exists=("notes.json",), setup=write("notes.json", "{}")),
    Row("plan-opt-inf", ["plan", "{src}", "-o", "{t}/plan.json", "--budget-ppl", "5", "--opt", "damp=inf"], 2,
        "not a valid finite float", absent=("plan.json",)),
    # ---- bench, report, build, triton: the same output rules (core.atomic) and their own checks
    Row("bench-run-overwrite-unrelated", ["bench", "run", "{pruned}", "-o", "{t}/notes.json", "--overwrite"], 2,
        "not written by sparse-trt", exists=("notes.json",), setup=write("notes.json", '{"mine": true}')),
    Row("bench-run-out-exists", ["bench", "run", "{pruned}", "-o", "{t}/notes.json"], 2, "already exists",
        exists=("notes.json",), setup=write("notes.json", "{}")),
    Row("bench-run-out-is-folder", ["bench", "run", "{pruned}", "-o", "{t}/d"], 2, "is a folder",
        setup=lambda t, w: (t / "d").mkdir()),
    Row("bench-compare-unrelated-models", ["bench", "compare", "{src}", "{t}/m", "-o", "{t}/cmp.json"], 2,
        "different models", absent=("cmp.json",), setup=model_copy(lambda c: c.update(intermediate_size=256))),
    Row("report-overwrite-unrelated", ["report", "{t}/notes.json", "-o", "{t}/rep", "--overwrite"], 2,
        "not written by sparse-trt", exists=("rep/keep.txt",),
        setup=lambda t, w: (write("notes.json", "{}")(t, w), write("rep/keep.txt", "precious")(t, w))),
    Row("build-overwrite-unrelated", ["build", "{pruned}", "-o", "{t}/eng", "--overwrite"], 2, "not written by sparse-trt",
        exists=("eng/keep.txt",), setup=write("eng/keep.txt", "precious")),
    Row("build-overwrite-root", ["build", "{pruned}", "-o", "/", "--overwrite"], 2, "the file-system root"),
    Row("triton-repo-overwrite-unrelated", ["triton", "repo", "{pruned}", "--backend", "pytorch", "-o", "{t}/repo",
                                            "--overwrite"], 2, "not written by sparse-trt", exists=("repo/keep.txt",),
        setup=write("repo/keep.txt", "precious")),
    Row("triton-serve-port-out-of-range", ["triton", "serve", "{t}", "--http-port", "70000"], 2, "70000 is not in the range"),
    # ---- the CLI itself
    Row("help", ["--help"], 0, "prune"),
    Row("unknown-command", ["frobnicate"], 2, "No such command"),
]


def fill(arg: str, t: Path, w: dict) -> str:
    return arg.format(src=w["src"], pruned=w["pruned"], calib=w["calib"], t=t) if "{" in arg else arg


def invoke(argv: list[str], t: Path, w: dict, env: dict | None = None):
    return runner.invoke(app, [fill(a, t, w) for a in argv], env=env)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_table_is_large_and_unique():
    assert len(ROWS) >= 60
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, ws, tmp_path, monkeypatch):
    t = tmp_path / "work"
    t.mkdir()
    monkeypatch.chdir(t)
    w = dict(ws)
    if row.setup is not None:
        row.setup(t, w)
    if "_env" in w:
        for k, v in w["_env"].items():
            monkeypatch.setenv(k, v)
    try:
        res = invoke(row.argv, t, w)
    finally:
        if "_restore" in w:
            w["_restore"]()
    out = flat(res.output)
    assert res.exit_code == row.code, f"{row.id}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    if row.code not in (0, 130, 143) and row.id not in ("unknown-command", "missing-required-out",
                                                         "triton-serve-port-out-of-range"):
        assert "fix:" in out, res.output  # every named error says how to fix it
    assert flat(row.phrase) in out, res.output
    if "_pid" in w:
        assert f"PID {w['_pid']}" in out
    assert "Traceback" not in res.output
    for rel in row.exists:
        assert (t / rel).exists(), f"{row.id}: {rel} should exist"
    for rel in row.absent:
        assert not (t / rel).exists(), f"{row.id}: {rel} should not exist"
    assert not list(t.glob(".*.tmp-*")) or row.id == "stale-tmp-named"
    assert (Path(ws["pruned"]) / "sparsity.json").is_file()  # the shared input is never touched


def test_outputs_follow_the_umask(ws, tmp_path, monkeypatch):
    """Weights and JSON written through temp files get the umask's modes, like config and tokenizer files."""
    old = os.umask(0o022)
    try:
        t = tmp_path / "work"
        t.mkdir()
        res = invoke(P(), t, ws)
        assert res.exit_code == 0, res.output
        modes = {p.name: p.stat().st_mode & 0o777 for p in (t / "o").iterdir()}
        assert modes["model.safetensors"] == 0o644 and modes["sparsity.json"] == 0o644, modes
        assert ((t / "o").stat().st_mode & 0o777) == 0o755
        res = invoke(["eval", str(t / "o"), "--data", ws["calib"], "--seqlen", "32", "--max-windows", "2", "--device", "cpu",
                      "--json", str(t / "ppl.json")], t, ws)
        assert res.exit_code == 0, res.output
        assert (t / "ppl.json").stat().st_mode & 0o777 == 0o644
        assert (t / "o" / "sparsity.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_atomic_writes_follow_any_umask(tmp_path):
    """Temp files (mkstemp: 0600) and folders (mkdtemp: 0700) get the umask's modes before the rename."""
    from sparse_trt.core.atomic import atomic_output_dir, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_output_dir(tmp_path / "d") as tmp:
            fd = os.open(tmp / "w.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            (tmp / "sub").mkdir(mode=0o700)
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "d" / "w.safetensors").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
        assert (tmp_path / "d" / "sub").stat().st_mode & 0o777 == 0o750
        os.chmod(tmp_path / "a.json", 0o600)  # an existing file keeps the mode its owner gave it
        atomic_write_text(tmp_path / "a.json", "[]")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_exit_code_table_matches_readme():
    """README's exit-code table is EXIT_CODES; only core/errors.py assigns codes; CLI exits use known codes."""
    import importlib
    import pkgutil
    import re

    import sparse_trt
    from sparse_trt.core import errors

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = dict((int(c), m.strip()) for c, m in re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.M))
    assert rows == errors.EXIT_CODES

    for mod in pkgutil.walk_packages(sparse_trt.__path__, "sparse_trt."):
        if ".python_models" in mod.name:
            continue  # run inside tritonserver only
        try:
            importlib.import_module(mod.name)
        except ImportError:
            continue

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    owners: dict[int, list[str]] = {}
    for cls in [errors.SparseTrtError, *subclasses(errors.SparseTrtError)]:
        assert cls.exit_code in errors.EXIT_CODES, cls
        if "exit_code" in cls.__dict__:
            assert cls.__module__ == "sparse_trt.core.errors", f"{cls.__module__}.{cls.__name__} sets its own exit code"
            owners.setdefault(cls.exit_code, []).append(cls.__name__)
    assert all(len(v) == 1 for v in owners.values()), owners  # one class, one meaning, per code
    cli = Path(sparse_trt.__file__).parent / "cli"
    for f in cli.glob("*.py"):
        for code in re.findall(r"typer\.Exit\((\d+)\)", f.read_text(encoding="utf-8")):
            assert int(code) in errors.EXIT_CODES, (f.name, code)
