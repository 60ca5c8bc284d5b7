"""Engine builds: TensorRT-LLM engines with weight sparsity (trtllm.py), build-log parsing, build_report.json."""
