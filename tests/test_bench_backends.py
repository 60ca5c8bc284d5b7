"""Backends: wrong paths and kinds, missing dependencies, CPU refusals, NVML absence, engine info."""

import json

import pytest
import torch

from sparse_trt.bench import memory
from sparse_trt.bench.backends.base import (
    BackendSpec,
    backend_class,
    backend_names,
    create_backend,
    register_backend,
)
from sparse_trt.bench.backends.engine_info import sparse_kernels_from_report
from sparse_trt.bench.backends.torch_2of4 import holds_2of4
from sparse_trt.bench.errors import WorkloadError
from sparse_trt.bench.runner import open_backend
from sparse_trt.bench.workload import Workload
from sparse_trt.core.deps import available
from sparse_trt.core.errors import DeviceError, InputError, MissingDependencyError, ModelLoadError
from sparse_trt.engine.report import write_report

CPU = torch.device("cpu")


def fake_engine(path, report=None, **build):
    path.mkdir(parents=True)
    cfg = {"pretrained_config": {"vocab_size": 320, "dtype": "float16", "max_position_embeddings": 4096},
           "build_config": {"max_batch_size": 8, "max_input_len": 512, "max_seq_len": 1024, **build}}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "rank0.engine").write_bytes(b"\0" * 64)
    if report is not None:
        (path / "build_report.json").write_text(json.dumps(report))
    return path


def test_registry():
    assert {"hf", "torch-2of4", "trtllm", "triton"} <= set(backend_names())
    with pytest.raises(InputError, match="unknown backend"):
        backend_class("nope")

    from bench_fakes import FakeBackend

    register_backend(FakeBackend)
    assert backend_class("fake") is FakeBackend


def test_torch_2of4_refuses_cpu(tiny_dirs):
    with pytest.raises(DeviceError, match="CUDA") as e:
        create_backend("torch-2of4", BackendSpec(str(tiny_dirs("llama")), CPU))
    assert "--backend hf" in e.value.fix


def test_holds_2of4():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 0, 3, 4]])
    assert holds_2of4(w)
    assert not holds_2of4(torch.ones(2, 8))


def test_hf_wrong_kinds(tmp_path, tiny_dirs):
    eng = fake_engine(tmp_path / "engine")
    with pytest.raises(InputError, match="engine folder"):
        create_backend("hf", BackendSpec(str(eng), CPU))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        create_backend("hf", BackendSpec(str(tmp_path / "empty"), CPU))
    b = create_backend("hf", BackendSpec(str(tmp_path / "missing" / "model"), CPU))
    with pytest.raises(ModelLoadError, match="does not exist"):
        b.limits()


def test_trtllm_paths_limits_and_missing_dependency(tmp_path, tiny_dirs):
    with pytest.raises(InputError, match="does not exist"):
        create_backend("trtllm", BackendSpec(str(tmp_path / "nope"), CPU))
    with pytest.raises(InputError, match="Hugging Face model folder"):
        create_backend("trtllm", BackendSpec(str(tiny_dirs("llama")), CPU))
    eng = fake_engine(tmp_path / "engine")
    from test_build_logparse import _parse, _report

    write_report(eng, _report(_parse("trtllm_build_sparse_none_picked.log")))
    with pytest.raises(WorkloadError, match="max_input_len of 512"):
        open_backend("trtllm", BackendSpec(str(eng), CPU), [Workload(1, 600, 10)])
    with pytest.raises(WorkloadError, match="max_batch_size of 8"):
        open_backend("trtllm", BackendSpec(str(eng), CPU), [Workload(16, 10, 10)])
    b = create_backend("trtllm", BackendSpec(str(eng), CPU))
    assert b.sparse_kernels().active is False and b.build_report()["sparsity"]["eligible_count"] == 11
    assert b.vocab_size() == 320
    if not available("tensorrt_llm"):
        b2 = create_backend("trtllm", BackendSpec(str(eng), torch.device("cuda", 0)))
        with pytest.raises(MissingDependencyError, match="tensorrt_llm") as e:
            b2.load()
        assert "container" in e.value.fix or "trtllm" in e.value.fix


def test_trtllm_needs_cuda(tmp_path):
    eng = fake_engine(tmp_path / "engine")
    b = create_backend("trtllm", BackendSpec(str(eng), CPU))
    with pytest.raises(DeviceError):
        b.load()


def test_triton_missing_client_names_extra(tmp_path, monkeypatch):
    import sparse_trt.bench.backends.triton as tb

    def fail(module, purpose=None):
        raise MissingDependencyError(f"'{module}' is needed", fix="pip install 'sparse_trt[triton]'")

    monkeypatch.setattr(tb, "require", fail)
    b = create_backend("triton", BackendSpec("ensemble", CPU, options={"url": "localhost:1"}))
    assert b.sparse_kernels().active is None  # no engine: not verified
    with pytest.raises(MissingDependencyError) as e:
        b.load()
    assert "sparse_trt[triton]" in e.value.fix


def test_build_report_variants():
    from test_build_logparse import _parse, _report

    assert sparse_kernels_from_report(None, "e").active is None
    dense = _report(_parse("trtllm_build_dense.log"), mode="dense")
    assert sparse_kernels_from_report(dense.to_dict(), "e").active is False
    k = sparse_kernels_from_report(_report(_parse("trtllm_build_sparse_llama.log")).to_dict(), "e")
    assert (k.active, k.sparse_layers, k.eligible_layers) == (True, 8, 11)
    # reports that are not of the build stage's schema are not guessed at
    assert sparse_kernels_from_report({"sparse_layers": ["a", "b"]}, "e").active is None
    assert sparse_kernels_from_report({"mode": "dense"}, "e").active is None


def test_nvml_absence_is_reported_not_raised(monkeypatch):
    def fail(module, purpose=None):
        raise MissingDependencyError("'pynvml' is needed", fix="pip install 'sparse_trt[bench]'")

    monkeypatch.setattr(memory, "require", fail)
    nv = memory.Nvml(0)
    assert not nv.ok and "sparse_trt[bench]" in nv.status
    assert nv.device_used() is None and nv.process_used() is None and nv.driver_version() is None
    probe = memory.MemoryProbe(CPU)
    probe.start()
    stats = probe.stop(10)
    assert stats.nvml_device_used_peak_bytes is None and stats.weights_bytes == 10
    assert any("NVML" in n for n in stats.notes)


def test_weights_bytes_counts_tied_once():
    lin = torch.nn.Linear(4, 4, bias=False)
    m = torch.nn.Sequential(lin, torch.nn.Linear(4, 4, bias=False))
    m[1].weight = lin.weight
    assert memory.weights_bytes(m) == 16 * 4


def test_backend_options_are_typed_and_strict(tmp_path, tiny_dirs):
    """--opt goes through the one strict parser: unknown keys and bad values are refused by name."""
    with pytest.raises(InputError, match="'kernal' is not an option of backend 'hf'"):
        create_backend("hf", BackendSpec(str(tiny_dirs("llama")), CPU, options={"kernal": "cutlass"}))
    eng = fake_engine(tmp_path / "engine")
    with pytest.raises(InputError, match="kv_cache_tokens='lots' of backend 'trtllm' is not a valid int"):
        create_backend("trtllm", BackendSpec(str(eng), CPU, options={"kv_cache_tokens": "lots"}))
    with pytest.raises(InputError, match=r"not in \(0, 1\]"):
        create_backend("trtllm", BackendSpec(str(eng), CPU, options={"kv_cache_free_gpu_memory_fraction": "1.5"}))
    b = create_backend("triton", BackendSpec("ensemble", CPU, options={"protocol": "http", "ignore_eos": "no",
                                                                       "timeout_s": "5"}))
    assert (b.opts.protocol, b.opts.ignore_eos, b.opts.timeout_s) == ("http", False, 5.0)
    with pytest.raises(InputError, match="protocol=ftp is not known"):
        create_backend("triton", BackendSpec("ensemble", CPU, options={"protocol": "ftp"}))
