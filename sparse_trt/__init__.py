"""sparse_trt: prune causal LMs to 2:4 / N:M sparsity, build TensorRT-LLM engines, serve, benchmark."""

__version__ = "0.1.0"
