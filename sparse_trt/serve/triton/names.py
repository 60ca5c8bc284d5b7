"""Validation of user-given model names (they become folder names and URL path segments)."""

from __future__ import annotations

import re

from .errors import TritonRepoError

# Triton model names are folder names inside the repository and appear in URLs (/v2/models/<name>):
# keep to a conservative set that is safe in both, with no path separators or traversal.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def validate_model_name(name: str, what: str = "--name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise TritonRepoError(
            f"{what} '{name}' is not a valid Triton model name",
            fix="use 1-64 characters from letters, digits, '_', '-' and '.', starting with a letter or digit "
            "(no '/', no '..', no spaces)",
        )
    return name
