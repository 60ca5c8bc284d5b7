"""The trtllm bench backend against a stand-in for ``tensorrt_llm.bindings.executor`` with the real names
and semantics (tests/fake_trtllm_executor.py): streaming, requests in flight from several threads, the
explicit KV-cache budget, multi-rank refusal, build reports read through the build stage's reader."""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import fake_trtllm_executor as fake
import pytest
import torch

from sparse_trt.bench.backends import trtllm as tb
from sparse_trt.bench.backends.base import BackendSpec, GenerationRequest, create_backend
from sparse_trt.bench.backends.engine_info import kv_geometry, sparse_kernels_from_report
from sparse_trt.bench.errors import BackendError
from sparse_trt.core.errors import DeviceError, InputError
from sparse_trt.engine.logparse import parse_build_log
from sparse_trt.engine.report import SCHEMA, SCHEMA_VERSION, BuildReport, write_report
from sparse_trt.engine.trtllm import engine_settings, sparsity_section

CUDA = torch.device("cuda", 0)
LOGS = Path(__file__).parent / "fixtures" / "trt_logs"


@pytest.fixture
def executor_module(monkeypatch):
    """Install the stand-in as tensorrt_llm.bindings.executor (and its parents) for this test only."""
    pkg, bindings = types.ModuleType("tensorrt_llm"), types.ModuleType("tensorrt_llm.bindings")
    pkg.bindings, bindings.executor = bindings, fake
    monkeypatch.setitem(sys.modules, "tensorrt_llm", pkg)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.bindings", bindings)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.bindings.executor", fake)
    monkeypatch.setattr(tb, "free_device_memory", lambda device: (40 * 2**30, 80 * 2**30))
    fake.Executor.instances.clear()
    return fake


def engine(path: Path, *, world: int = 1, log: str | None = "trtllm_build_sparse_llama_fused.log", mode="sparse",
           max_batch=4, max_seq=256) -> Path:
    path.mkdir(parents=True)
    cfg = {"version": "1.2.0",
           "pretrained_config": {"architecture": "LlamaForCausalLM", "dtype": "float16", "vocab_size": 320,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "hidden_size": 64, "head_size": 16, "max_position_embeddings": 1024,
                                 "mapping": {"world_size": world, "tp_size": world, "pp_size": 1},
                                 "quantization": {"quant_algo": None, "kv_cache_quant_algo": None}},
           "build_config": {"max_batch_size": max_batch, "max_input_len": 128, "max_seq_len": max_seq,
                            "max_num_tokens": 1024, "opt_num_tokens": None,
                            "plugin_config": {"gemm_plugin": None, "tokens_per_block": 32, "multiple_profiles": True,
                                              "use_fused_mlp": True}}}
    (path / "config.json").write_text(json.dumps(cfg))
    for r in range(world):
        (path / f"rank{r}.engine").write_bytes(b"\0" * 4096)
    if log is not None:
        write_report(path, _report(path, cfg, log, mode))
    return path


def _report(path, cfg, log, mode):
    from test_build_logparse import _report as base

    r = base(parse_build_log((LOGS / log).read_text()), mode=mode)
    per_rank = [{f"transformer.layers.{i}.{b}": 4096 for i in (0, 1) for b in (
        "attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")} | {"lm_head": 8192}]
    return BuildReport(**{**r.__dict__, "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "engine_dir": str(path),
                          "engine": engine_settings(cfg),
                          "sparsity": sparsity_section(mode, parse_build_log((LOGS / log).read_text()), per_rank)})


def test_streams_one_timestamp_per_token(tmp_path, executor_module):
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "e")), CUDA))
    b.load()
    try:
        (seq, seq2) = b.generate(GenerationRequest([[1, 2, 3], [4, 5]], max_new_tokens=6))
        assert seq.output_tokens == 6 and len(seq.token_times) == 6 and seq.input_tokens == 3
        assert seq.first_token == seq.token_times[0] and seq.end == seq.token_times[-1] and seq.start <= seq.first_token
        assert all(b_ >= a for a, b_ in zip(seq.token_times, seq.token_times[1:], strict=False))
        assert len(set(seq.token_times)) > 1  # tokens from different engine steps carry different times
        assert seq2.input_tokens == 2 and seq2.output_tokens == 6
        ex = fake.Executor.instances[0]
        assert ex.max_in_flight == 2  # both sequences of the request batched in flight
    finally:
        b.close()
    assert fake.Executor.instances[0]._stop


def test_requests_from_several_threads_are_in_flight_together(tmp_path, executor_module):
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "e")), CUDA))
    assert b.thread_safe
    b.load()
    results, errors = [], []

    def client(i):
        try:
            results.append(b.generate(GenerationRequest([[i, i + 1]], max_new_tokens=20)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert not errors and len(results) == 4 and all(r[0].output_tokens == 20 for r in results)
    assert fake.Executor.instances[0].max_in_flight >= 3


def test_kv_budget_explicit_identical_and_recorded(tmp_path, executor_module):
    dense = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "d", mode="dense",
                                                             log="trtllm_build_dense.log")), CUDA))
    sparse = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "s")), CUDA))
    dense.load()
    sparse.load()
    try:
        d_kv, s_kv = (fake.Executor.instances[i].config.kv_cache_config for i in (0, 1))
        assert d_kv.max_tokens == s_kv.max_tokens == 4 * 256  # max_batch_size x max_seq_len, whole 32-token blocks
        assert d_kv.free_gpu_memory_fraction is None and d_kv.enable_block_reuse is False
        info = sparse.info()
        g = kv_geometry(json.loads((tmp_path / "s" / "config.json").read_text()))
        assert g.bytes_per_token == 2 * 2 * 2 * 16 * 2  # K+V x layers x kv heads x head size x fp16
        assert info["kv_cache"]["max_tokens"] == 1024 and info["kv_cache"]["bytes"] == 1024 * g.bytes_per_token
        assert info["memory"]["configured_total_bytes"] == 4096 + 1024 * g.bytes_per_token
        assert "engine" in info["memory"]["note"]
    finally:
        dense.close()
        sparse.close()
    b = create_backend("trtllm", BackendSpec(str(tmp_path / "s"), CUDA, options={
        "kv_cache_tokens": "1000", "kv_cache_free_gpu_memory_fraction": "0.3"}))
    b.load()
    kv = fake.Executor.instances[-1].config.kv_cache_config
    assert kv.max_tokens == 1024 and kv.free_gpu_memory_fraction == 0.3  # rounded up to whole blocks
    assert b.info()["kv_cache"]["source"] == "--opt kv_cache_tokens"
    b.close()


def test_budget_that_cannot_fit_is_refused(tmp_path, executor_module, monkeypatch):
    monkeypatch.setattr(tb, "free_device_memory", lambda device: (64 * 1024, 2**30))
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "e")), CUDA))
    with pytest.raises(DeviceError, match="does not fit") as e:
        b.load()
    assert "kv_cache_tokens" in e.value.fix and not fake.Executor.instances
    with pytest.raises(InputError, match="kv_cache_free_gpu_memory_fraction"):
        create_backend("trtllm", BackendSpec(str(tmp_path / "e"), CUDA, options={"kv_cache_free_gpu_memory_fraction": "2"}))


def test_request_error_becomes_backend_error(tmp_path, executor_module):
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "e")), CUDA, options={"kv_cache_tokens": "32"}))
    b.load()
    try:
        with pytest.raises(BackendError, match="KV tokens"):
            b.generate(GenerationRequest([[1] * 20], max_new_tokens=40))
    finally:
        b.close()


def test_multi_rank_engine_is_refused_with_how_to(tmp_path):
    with pytest.raises(InputError, match="2 ranks") as e:
        create_backend("trtllm", BackendSpec(str(engine(tmp_path / "e", world=2)), CUDA))
    assert "Triton with world size 2" in e.value.fix and "mpirun -n 2" in e.value.fix


def test_sparse_verdict_from_typed_report(tmp_path):
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "full", log="trtllm_build_sparse_llama.log")), CUDA))
    k = b.sparse_kernels()
    assert k.active is True and k.sparse_layers == 8 and k.eligible_layers == 11 and "GEMM" in k.detail
    assert b.build_report()["schema_version"] == SCHEMA_VERSION
    part = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "fn", log="trtllm_build_sparse_foreignnode.log")), CUDA))
    k = part.sparse_kernels()
    assert k.active is False and k.kind.startswith("partly") and "unmapped" in k.detail
    (tmp_path / "fn" / "build_report.json").write_text(json.dumps({"mode": "sparse", "sparse_layers": 9}))
    bad = create_backend("trtllm", BackendSpec(str(tmp_path / "fn"), CUDA))
    assert bad.sparse_kernels().active is None and "invalid" in bad.sparse_kernels().kind
    assert sparse_kernels_from_report(None, "e").active is None
    dense = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "d", mode="dense", log="trtllm_build_dense.log")), CUDA))
    assert dense.sparse_kernels().active is False


class _Proc:
    def __init__(self, pid, used):
        self.pid, self.usedGpuMemory = pid, used


def _fake_nvml(procs):
    """pynvml's names: nvmlInit, nvmlDeviceGetHandleByIndex, nvmlDeviceGetMemoryInfo, nvmlDeviceGetComputeRunningProcesses."""
    m = types.ModuleType("pynvml")
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=5 * 2**30, total=80 * 2**30)
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: procs
    return m


def test_nvml_process_memory_unknown_not_zero(monkeypatch):
    import os

    from sparse_trt.bench import memory

    # in a container NVML lists host PIDs: ours is not among them
    monkeypatch.setattr(memory, "require", lambda module, purpose=None: _fake_nvml([_Proc(4242, 3 * 2**30)]))
    nv = memory.Nvml(0)
    assert nv.ok and nv.process_used() is None and nv.device_used() == 5 * 2**30
    monkeypatch.setattr(memory, "require", lambda module, purpose=None: _fake_nvml([_Proc(os.getpid(), None)]))
    assert memory.Nvml(0).process_used() is None
    monkeypatch.setattr(memory, "require", lambda module, purpose=None: _fake_nvml([_Proc(os.getpid(), 2**30)]))
    assert memory.Nvml(0).process_used() == 2**30


def test_configured_memory_notes_and_no_torch_peaks(monkeypatch, tmp_path, executor_module):
    from sparse_trt.bench import memory

    monkeypatch.setattr(memory, "require", lambda module, purpose=None: _fake_nvml([]))
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "e")), CUDA))
    cm = b.configured_memory()
    assert cm.engine_bytes == 4096 and cm.kv_cache_tokens == 1024 and cm.total_bytes == 4096 + cm.kv_cache_bytes
    probe = memory.MemoryProbe(torch.device("cpu"), torch_allocator=b.torch_allocator, configured=cm)
    probe.nvml = memory.Nvml(0)  # the NVML of a GPU whose process list does not show us (no CUDA device here)
    probe.start()
    stats = probe.stop(b.weights_bytes())
    assert stats.nvml_process_used_peak_bytes is None and stats.weights_bytes == 4096
    assert any("engine 4096 B + KV cache" in n for n in stats.notes)
    assert any("per-process memory unknown" in n for n in stats.notes)


def test_signature_and_token_source(tmp_path):
    a = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "a")), CUDA))
    b = create_backend("trtllm", BackendSpec(str(engine(tmp_path / "b", mode="dense", log="trtllm_build_dense.log")), CUDA))
    assert a.model_signature() == b.model_signature() and a.model_signature()["num_hidden_layers"] == 2
    assert "executor" in a.token_counts()


def test_compare_two_engines_through_the_load_generator(tmp_path, executor_module, monkeypatch):
    """The real runner drives both engines from 4 closed-loop workers: requests overlap in each executor."""
    from sparse_trt.bench.loadgen import LoadSpec
    from sparse_trt.bench.runner import compare_benchmark, open_backend
    from sparse_trt.bench.workload import Workload

    monkeypatch.setattr(tb.TrtllmBackend, "memory_device", lambda self: torch.device("cpu"))  # no CUDA here
    pts = [Workload(1, 8, 6, 4)]
    d = open_backend("trtllm", BackendSpec(str(engine(tmp_path / "d", mode="dense", log="trtllm_build_dense.log")),
                                           CUDA), pts)
    s = open_backend("trtllm", BackendSpec(str(engine(tmp_path / "s", log="trtllm_build_sparse_llama.log")), CUDA), pts)
    try:
        rd, rs, cmp = compare_benchmark(d, s, pts, LoadSpec(requests=8, warmup=1), pairs=2)
    finally:
        d.close()
        s.close()
    assert all(ex.max_in_flight >= 2 for ex in fake.Executor.instances)
    assert rd.points[0].output_tokens > 0 and rs.points[0].output_tokens == rd.points[0].output_tokens
    assert rs.sparse_kernels.active is True and rd.sparse_kernels.active is False
    assert rs.backend_info["kv_cache"]["max_tokens"] == rd.backend_info["kv_cache"]["max_tokens"]
    # the per-point memory rows carry the configured engine + KV-cache bytes (torch cannot see the executor's)
    for run in (rd, rs):
        notes = " ".join(run.points[0].memory.notes)
        assert "configured device memory: engine" in notes and "KV cache" in notes
