"""Writers of pipeline artifacts: pruned HF checkpoints (hf.py), TensorRT-LLM checkpoints (trtllm/)."""
