"""Benchmark backends; see base.py for the interface and the registry."""

from .base import (
           Backend,
           BackendSpec,
           GenerationRequest,
           SequenceTiming,
           backend_names,
           create_backend,
           register_backend,
)

__all__ = ["Backend", "BackendSpec", "GenerationRequest", "SequenceTiming", "backend_names", "create_backend",
           "register_backend"]
