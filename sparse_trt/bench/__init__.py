"""Benchmarks: dense vs sparse latency, throughput and memory, measured honestly.

Layers: ``workload`` (what to run) -> ``backends`` (how to run it: hf, torch-2of4, trtllm, triton)
-> ``loadgen`` (one closed-loop / Poisson load generator for every backend) -> ``runner`` (warm-up,
measured windows, alternating dense/sparse pairs) with ``metrics`` (AIPerf's definitions), ``timing``
(percentiles, bootstrap CIs), ``memory`` / ``server_memory`` probes and ``conditions`` (load, CPU steal,
GPU clocks) -> ``results`` (typed, versioned JSON) -> ``report`` (Markdown + PNG, rendered from the JSON
only). ``session`` is what the CLI and the demo call. ``gemm_probe`` / ``onnx_gemm`` time single linear
shapes dense vs 2:4.
"""
