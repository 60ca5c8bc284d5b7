"""Benchmark-specific errors, all under the project's SparseTrtError hierarchy."""

from __future__ import annotations

from sparse_trt.core.errors import BackendFailedError, InputError, WrongResultError


class WorkloadError(InputError):
    """A workload point exceeds what the model or engine can take (context, batch, input length)."""


class ResultsError(InputError):
    """A results file is missing, empty, foreign, of another schema version, or malformed."""


class BackendError(BackendFailedError):
    """A backend failed while running (the points finished before the failure are kept; exit 11)."""


class CorrectnessError(WrongResultError):
    """A sparse kernel's output differs from the masked-dense reference beyond tolerance (exit 12)."""
