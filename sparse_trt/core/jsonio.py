"""Reading JSON artifacts (configs, manifests, reports) with errors that name the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SparseTrtError


def read_json_object(path: Path, error: type[SparseTrtError], fix: str) -> dict[str, Any]:
    """Parse ``path`` as a JSON object or raise ``error`` naming the file and ``fix``."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"'{path}' is not readable JSON ({e})", fix=fix) from None
    if not isinstance(obj, dict):
        raise error(f"'{path}' does not hold a JSON object", fix=fix)
    return obj
