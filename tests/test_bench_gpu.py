"""GPU-only checks: torch-2of4 equals masked-dense, GEMM timings, a short compare. Skipped without CUDA."""

import pytest
import torch

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                                reason="needs a CUDA GPU with compute capability 8.0+")


@needs_cuda
def test_gemm_probe_times_on_gpu():
    from sparse_trt.bench.gemm_probe import run_gemm

    res = run_gemm([(256, 256)], [16, 64], torch.float16, torch.device("cuda", 0), source="t", warmup=2, iters=5,
                   onnx=False, tensorrt=False)
    for r in res.rows:
        assert r.status == "ok" and r.speedup and r.speedup > 0 and r.max_abs_err < 0.5


@needs_cuda
def test_torch_2of4_backend_matches_and_compares(tmp_path):
    from sparse_trt.bench.backends.base import BackendSpec
    from sparse_trt.bench.loadgen import LoadSpec
    from sparse_trt.bench.runner import compare_benchmark, open_backend
    from sparse_trt.bench.synth import synth_pair
    from sparse_trt.bench.workload import Workload

    cfg = dict(model_type="llama", hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4,
               num_hidden_layers=2, vocab_size=512, max_position_embeddings=256)
    pair = synth_pair(cfg, tmp_path, dtype=torch.float16, seed=0)
    dev = torch.device("cuda", 0)
    pts = [Workload(2, 16, 4, 1)]
    d = open_backend("hf", BackendSpec(str(pair.dense_dir), dev), pts)
    s = open_backend("torch-2of4", BackendSpec(str(pair.sparse_dir), dev), pts)
    try:
        k = s.sparse_kernels()
        assert k.active and k.sparse_layers == 14
        rd, rs, cmp = compare_benchmark(d, s, pts, LoadSpec(requests=1, warmup=1), pairs=2)
    finally:
        d.close()
        s.close()
    assert rs.points[0].memory.torch_peak_allocated_bytes > 0
    assert rs.points[0].memory.weights_bytes < rd.points[0].memory.weights_bytes
    assert cmp.kind == "sparse" and cmp.points[0].output_throughput_ratio.ratios.n == 2
