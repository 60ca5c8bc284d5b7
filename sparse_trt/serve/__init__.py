"""Serving: Triton Inference Server model repositories, server management and clients."""
