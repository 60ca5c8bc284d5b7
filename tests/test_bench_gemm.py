"""GEMM probe shapes, CPU 'not available' rows, ONNX 2:4 graphs vs torch, synthetic models."""

import numpy as np
import pytest
import torch

from sparse_trt.bench.gemm_probe import model_shapes, parse_shapes, random_2of4, run_gemm
from sparse_trt.bench.synth import build_from_config, load_config_dict, mask_2of4_, synth_pair
from sparse_trt.core.errors import InputError
from sparse_trt.core.manifest import Manifest


def test_parse_shapes():
    assert parse_shapes("4096x4096, 11008x4096,4096X11008,14336×4096,4096x4096") == [
        (4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]
    for bad in ("", "4096", "4096x0", "8x6"):
        with pytest.raises(InputError):
            parse_shapes(bad)


def test_model_shapes_from_tiny(tiny_dirs):
    shapes = model_shapes(str(tiny_dirs("llama")))
    assert set(shapes) == {(64, 64), (32, 64), (128, 64), (64, 128)}  # q/o, k/v (2 kv heads), gate/up, down


def test_cpu_rows_are_labelled_not_faked():
    res = run_gemm([(32, 64)], [1, 8], torch.float16, torch.device("cpu"), source="--shapes", warmup=1, iters=2)
    assert len(res.rows) == 4  # torch + tensorrt rows, 2 token counts each
    for r in res.rows:
        assert r.status.startswith("not available") and r.dense_s is None and r.sparse_s is None and r.speedup is None
    assert res.onnx_checks and all(c.passed for c in res.onnx_checks)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_onnx_graph_carries_2of4_and_matches_torch(dtype):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from sparse_trt.bench.onnx_gemm import check_gemm_graph, gemm_graph, initializer, is_2of4_along_k

    w = random_2of4((48, 64), dtype, torch.device("cpu"), seed=3)
    m = gemm_graph(w.numpy())
    onnx.checker.check_model(m)
    wt = initializer(m)
    assert wt.shape == (64, 48) and is_2of4_along_k(wt) and (wt == 0).mean() == pytest.approx(0.5)
    assert np.array_equal(wt, w.numpy().T)
    c = check_gemm_graph(w, tokens=5)
    assert c.checker == "ok" and c.passed and c.onnxruntime_max_abs_err <= c.tolerance
    dense = torch.randn(48, 64).to(dtype)
    assert not check_gemm_graph(dense, tokens=5).passed  # not 2:4 -> not passed


def test_mask_2of4():
    w = torch.arange(1, 17, dtype=torch.float32).reshape(2, 8) * torch.tensor([1, -1, 1, -1, 1, 1, -1, 1.0])
    mask_2of4_(w)
    assert ((w.reshape(2, 2, 4) != 0).sum(-1) == 2).all()
    assert w[0, :4].tolist() == [0, 0, 3, -4]


def test_build_from_config_and_pair(tmp_path):
    import tiny

    cfg = tiny.config("llama").to_dict()
    m = build_from_config(cfg, dtype=torch.float32, seed=0, num_layers=1)
    assert m.config.num_hidden_layers == 1 and m.config.hidden_size == 64
    assert load_config_dict("llama-7b")["intermediate_size"] == 11008
    with pytest.raises(InputError):
        load_config_dict(tmp_path / "none.json")
    pair = synth_pair(cfg, tmp_path / "syn", dtype=torch.float32, seed=0, num_layers=1)
    man = Manifest.load(pair.sparse_dir)
    assert man.pattern == "2:4" and len(man.layers) == 7 and all(abs(r.sparsity - 0.5) < 1e-6 for r in man.layers)
    assert (pair.dense_dir / "config.json").is_file()


def test_gpu_check_script_inputs_are_valid():
    """benchmarks/gpu_check.sh: its shapes parse, its preset exists, its CLI options exist."""
    import re
    import subprocess
    from pathlib import Path

    from sparse_trt.bench.synth import PRESETS

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_check.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    shapes = re.search(r"^SHAPES=(\S+)$", text, re.M).group(1)
    assert parse_shapes(shapes) == [(4096, 4096), (4096, 11008), (11008, 4096), (14336, 4096)]
    assert re.search(r"--config (\S+)", text).group(1) in PRESETS
    tokens = [int(t) for t in re.search(r"^TOKENS=(\S+)$", text, re.M).group(1).split(",")]
    assert min(tokens) <= 16 and max(tokens) >= 512  # decode and prefill GEMM shapes
    limits = [int(x) for x in re.findall(r"^\s*step [\w-]+ (\d+) ", text, re.M)]
    budget = int(re.search(r"BUDGET_S=\$\{BUDGET_S:-(\d+)\}", text).group(1))
    assert len(limits) == 9 and sum(limits) <= budget <= 480  # per-step limits within the 8-minute budget
    assert {"float16", "bfloat16", "fp8"} <= set(re.findall(r"bench gemm .*?--dtype (\S+)", text.replace("\\\n", " ")))
    smol = Path(__file__).parent.parent / "benchmarks" / "smollm2-135m.config.json"
    from sparse_trt.bench.synth import load_config_dict

    assert load_config_dict(smol)["hidden_size"] == 576
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    for cmd in ("gemm", "compare", "synth"):
        help_text = " ".join(CliRunner().invoke(app, ["bench", cmd, "--help"], env={"COLUMNS": "200"}).output.split())
        opts = set(re.findall(r"bench " + cmd + r" .*", text.replace("\\\n", " ")))
        assert opts, cmd
        for line in opts:
            for opt in re.findall(r"(--[a-z][a-z0-9-]+)", line):
                assert opt in help_text, (cmd, opt)


def test_gpu_check_exits_at_once_without_a_gpu(tmp_path):
    """On a machine without CUDA the script stops in seconds, saying why, and runs nothing."""
    import os
    import shutil
    import subprocess
    import time
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_check.sh"
    env = dict(os.environ)
    if shutil.which("nvidia-smi"):  # a GPU machine: hide nvidia-smi to see the no-GPU path
        env["PATH"] = "/nonexistent"
    t0 = time.perf_counter()
    r = subprocess.run(["/bin/bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       timeout=60)
    assert time.perf_counter() - t0 < 20
    assert r.returncode == 2 and "no NVIDIA GPU" in r.stderr and "Nothing was run" in r.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_preflight_names_what_is_missing(tmp_path):
    """With a GPU listed but no CUDA torch it stops at once; with CUDA but no CLI dependencies it names them."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_check.sh"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GPU_CHECK_NO_INSTALL="1")
    r = subprocess.run(["bash", str(script), str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=120)
    if r.returncode == 2:  # this machine's torch has no CUDA
        assert "no CUDA torch" in r.stderr
    # a Python whose torch sees CUDA but that lacks typer (stands in for a bare torch-only image)
    fake_py = bin_dir / "fakepy"
    fake_py.write_text("#!/bin/sh\ncase \"$2\" in *typer*) exit 1;; esac\nexit 0\n")
    fake_py.chmod(0o755)
    r = subprocess.run(["bash", str(script), str(tmp_path / "b")], capture_output=True, text=True,
                       env=dict(env, PYTHON=str(fake_py)), timeout=120)
    assert r.returncode == 3 and "needs typer" in r.stderr and "pip install" in r.stderr


def test_report_cli_has_no_plots_flag():
    from typer.testing import CliRunner

    from sparse_trt.cli.main import app

    assert "--no-plots" in CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "200"}).output


def test_tensorrt_tactic_from_its_info_log():
    from sparse_trt.bench.gemm_probe import (
        TRT_NOT_ELIGIBLE,
        TRT_NOT_PICKED,
        TRT_PICKED,
        TRT_UNKNOWN,
        tactic_status,
    )

    # the messages a TensorRT logger receives (no timestamp prefix), as in its (Sparsity) INFO lines
    elig = "(Sparsity) Layers eligible for sparse math: gemm_matmul"
    assert tactic_status(elig + "\n(Sparsity) TRT inference plan picked sparse implementation for layers: gemm_matmul") == TRT_PICKED
    assert tactic_status(elig + "\n(Sparsity) TRT inference plan picked sparse implementation for layers: ") == TRT_NOT_PICKED
    assert tactic_status("(Sparsity) Layers eligible for sparse math: \n(Sparsity) TRT inference plan picked sparse "
                         "implementation for layers: ") == TRT_NOT_ELIGIBLE
    assert tactic_status("Global timing cache in use.") == TRT_UNKNOWN


def test_winners_say_not_picked_instead_of_dense_wins():
    from sparse_trt.bench.gemm_probe import TRT_NOT_PICKED, TRT_PICKED, winners
    from sparse_trt.bench.results import GemmResult, GemmRow
    from sparse_trt.bench.timing import Summary

    s = Summary.of([1.0])

    def row(engine, speedup, kind):
        return GemmRow([64, 64], 8, "float16", engine, "ok", s, s, speedup, 0.0, kind)

    res = GemmResult(device="cuda:0", source="--shapes", rows=[
        row("tensorrt", 0.9, TRT_NOT_PICKED), row("tensorrt", 1.2, TRT_PICKED), row("torch", 0.9, "torch (CUTLASS)")],
        onnx_checks=[], notes=[])
    assert [v for _, v in winners(res)] == ["sparse tactic not picked", "sparse wins", "dense wins"]


@pytest.mark.parametrize("req,cc,lt,want", [
    ("auto", (8, 0), True, "cusparselt"), ("auto", (8, 6), False, "cutlass"), ("auto", (9, 0), True, "cusparselt"),
    ("cutlass", (8, 9), True, "cutlass"), ("cusparselt", (8, 0), True, "cusparselt"), ("auto", (10, 0), True, "cusparselt"),
])
def test_torch_2of4_kernel_choice_per_gpu(req, cc, lt, want):
    from sparse_trt.bench.backends.torch_2of4 import choose_kernel

    kind, why = choose_kernel(req, cc, lt)
    assert kind == want and why


def test_torch_2of4_kernel_refusals():
    from sparse_trt.bench.backends.torch_2of4 import choose_kernel
    from sparse_trt.core.errors import DeviceError

    with pytest.raises(DeviceError, match="sm8x GPUs only; this GPU is sm90"):
        choose_kernel("cutlass", (9, 0), True)  # Hopper: torch's CUTLASS 2:4 kernels are sm8x-only
    with pytest.raises(DeviceError, match="only through cuSPARSELt"):
        choose_kernel("auto", (9, 0), False)
    with pytest.raises(InputError):
        choose_kernel("fastest", (8, 0), True)
