"""Benchmarks: dense vs sparse latency, throughput and memory, measured honestly.

Layers: ``workload`` (what to run) -> ``backends`` (how to run it: hf, torch-2of4, trtllm, triton)
-> ``runner`` (warm-up, timed iterations, alternating compare) with ``timing`` and ``memory`` probes
-> ``results`` (typed, versioned JSON) -> ``report`` (Markdown + PNG, rendered from the JSON only).
``gemm_probe`` / ``onnx_gemm`` time single linear shapes dense vs 2:4.
"""
