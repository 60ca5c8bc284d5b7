"""Error hierarchy and the one exit-code table. Every message names the offending input and how to fix it.

The CLI maps each class to an exit code (``exit_code``); library code only raises. ``EXIT_CODES`` is the
single table of what each code means (the README's exit-code table is checked against it by a test);
only the classes in this module set ``exit_code``: stage-specific errors subclass one of them.
"""

from __future__ import annotations

# code -> meaning; one meaning per code. Keep README.md's "Exit codes" table in step (a test checks it).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with the traceback)",
    2: "bad input: an option, path, model, data file or output location that cannot be used",
    3: "a manifest sparse-trt wrote (`sparsity.json`, `build_report.json`) is missing, corrupt, or does not "
    "cover every target linear of the model",
    4: "a weight breaks the sparsity pattern its manifest claims",
    5: "numerical failure: NaN/Inf in weights or activations, or a Hessian that cannot be repaired",
    6: "an optional dependency is missing (the message says which extra to install)",
    7: "the requested device is unavailable or unsuitable",
    8: "the Triton server failed: it did not start, a port is taken, a model did not load, or it died",
    9: "a request to a running Triton server failed",
    10: "the engine build (`trtllm-build`) failed or produced no engines",
    11: "a benchmark backend failed while running (the points finished before it are kept)",
    12: "a correctness check failed: a sparse kernel or exported graph differs from its dense reference",
    130: "interrupted (Ctrl-C); progress is kept for `--resume` where the command has it",
    143: "terminated (SIGTERM); handled like Ctrl-C",
}


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
    """A manifest this tool wrote (sparsity.json, build_report.json) is missing, corrupt or inconsistent."""

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


class ServerFailedError(SparseTrtError):
    """A server process (tritonserver) failed to start, lost a port, failed to load a model, or died."""

    exit_code = 8


class RequestFailedError(SparseTrtError):
    """A request to a running server failed."""

    exit_code = 9


class BuildFailedError(SparseTrtError):
    """The engine builder failed or produced no engines."""

    exit_code = 10


class BackendFailedError(SparseTrtError):
    """A benchmark backend failed while running."""

    exit_code = 11


class WrongResultError(SparseTrtError):
    """A kernel or exported graph gave results that differ from the dense reference beyond tolerance."""

    exit_code = 12


class ResumeError(InputError):
    """A resume state is missing or belongs to a different run."""


class OutputBusyError(InputError):
    """Another process holds the lock on the output location."""


class InterruptedRun(SparseTrtError):
    """The run was interrupted; partial progress was kept for --resume."""

    exit_code = 130


class TerminatedRun(InterruptedRun):
    """The run got SIGTERM; handled like Ctrl-C (partial progress kept for --resume)."""

    exit_code = 143
