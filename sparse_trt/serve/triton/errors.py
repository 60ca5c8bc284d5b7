"""Errors of the Triton serving stage (subclasses of the core hierarchy, so the CLI maps their exit codes)."""

from __future__ import annotations

from sparse_trt.core.errors import InputError, MissingDependencyError, RequestFailedError, ServerFailedError
from sparse_trt.engine.folder import EngineDirError  # noqa: F401  (re-exported: the engine stage reads engine folders)


class TritonRepoError(InputError):
    """A model repository (or an input used to build one) is invalid."""


class TokenizerError(TritonRepoError):
    """A tokenizer folder is missing or unreadable."""


class TritonNotFoundError(MissingDependencyError):
    """No tritonserver binary could be found."""


class TritonServerError(ServerFailedError):
    """tritonserver failed to start, died, or could not be reached (exit 8)."""


class PortInUseError(TritonServerError):
    """A port the server needs is taken by another process."""


class ServerOptionError(InputError):
    """A server option (host, port) cannot be used: unknown host, port out of range, ports that clash."""


class ModelLoadFailed(TritonServerError):
    """tritonserver started but a model in the repository failed to load."""


class RequestInputError(InputError):
    """A request parameter is out of range; refused before anything is sent."""


class TritonClientError(RequestFailedError):
    """A request to a running Triton server failed (exit 9)."""
