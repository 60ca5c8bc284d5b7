"""Errors of the TensorRT-LLM checkpoint exporter (subclasses of the core hierarchy, same exit codes)."""

from __future__ import annotations

from sparse_trt.core.errors import InputError, VerificationError


class NotPrunedError(InputError):
    """The model folder has no sparsity.json and the dense export was not asked for."""


class ShardingError(InputError):
    """--tp / --pp do not fit the model (heads, KV heads, layers, or a group of M weights would be cut)."""


class CheckpointError(InputError):
    """A TensorRT-LLM checkpoint folder is missing a file, or its config and tensors disagree."""


class PatternBrokenError(VerificationError):
    """A weight that the manifest says is N:M sparse is not (before or after sharding)."""
