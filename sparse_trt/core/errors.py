"""Error hierarchy. Every message names the offending input and how to fix it.

The CLI maps each class to an exit code (``exit_code``); library code only raises.
"""

from __future__ import annotations


class SparseTrtError(Exception):
    """Base class of every error sparse_trt raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\nFix: {fix}")


class InputError(SparseTrtError):
    """A user-supplied value (option, path, file content) is invalid."""

    exit_code = 2


class PatternError(InputError):
    """A sparsity pattern string or a pattern/shape combination is invalid."""


class ModelLoadError(InputError):
    """A model could not be found, read or loaded."""


class UnsupportedModelError(InputError):
    """The model's architecture has no adapter (or is refused for safety)."""


class CalibrationError(InputError):
    """Calibration or evaluation data is missing, malformed or too short."""


class OutputExistsError(InputError):
    """The output location exists and --overwrite was not given."""


class ManifestError(SparseTrtError):
    """A sparsity.json manifest is missing, corrupt or inconsistent."""

    exit_code = 3


class VerificationError(SparseTrtError):
    """A weight violates the sparsity pattern its manifest claims."""

    exit_code = 4


class NumericalError(SparseTrtError):
    """NaN/Inf in weights or activations, or a factorisation that cannot be repaired."""

    exit_code = 5


class MissingDependencyError(SparseTrtError):
    """An optional dependency (TensorRT-LLM, tritonclient, NVML, ...) is not installed."""

    exit_code = 6


class DeviceError(SparseTrtError):
    """The requested device is unavailable or unsuitable (e.g. no CUDA for 2:4 kernels)."""

    exit_code = 7


class ResumeError(InputError):
    """A resume state is missing or belongs to a different run."""


class InterruptedRun(SparseTrtError):
    """The run was interrupted; partial progress was kept for --resume."""

    exit_code = 130
