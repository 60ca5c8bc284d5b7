"""One parser for ``--opt KEY=VALUE`` options: strict, typed, shared by pruning methods and bench backends.

Each method or backend declares its options as a frozen dataclass whose fields have defaults; the field's
default decides the type (``bool``, ``int``, ``float``, ``str``; ``None`` defaults take ``str`` unless the
field's annotation names another). Unknown keys, unparsable values and non-finite numbers are errors that
name the key and the owner; checks in ``__post_init__`` (``ValueError``) become the same kind of error.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_kv(items: Iterable[str] | None, flag: str = "--opt") -> dict[str, str]:
    """``["damp=0.05", "refit=8"]`` -> ``{"damp": "0.05", "refit": "8"}``; a repeated key is an error."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"{flag} '{item}' is not KEY=VALUE", fix=f"e.g. {flag} damp=0.05")
        if key in out:
            raise InputError(f"{flag} {key} is given twice", fix=f"give {flag} {key}=... once")
        out[key] = value.strip()
    return out


def _field_type(cls: type, field: dataclasses.Field) -> type:
    if field.default is not dataclasses.MISSING and field.default is not None:
        return type(field.default)
    try:
        hint = typing.get_type_hints(cls).get(field.name, str)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to text
        return str
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else (hint if isinstance(hint, type) else str)


def convert(text: Any, typ: type) -> Any:
    """Text -> ``typ``; raises ValueError for anything that is not a clean value of that type."""
    if not isinstance(text, str):
        value = typ(text)
    elif typ is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    else:
        value = typ(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_options(options_cls: type[T], raw: Mapping[str, Any], owner: str, help_hint: str = "") -> T:
    """Build ``options_cls`` from ``{"key": "text"}``; every problem is an InputError naming ``owner``."""
    fields = {f.name: f for f in dataclasses.fields(options_cls) if f.init}
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise InputError(f"option '{key}' is not an option of {owner}", fix=f"options of {owner}: {known}")
        typ = _field_type(options_cls, fields[key])
        try:
            values[key] = convert(text, typ)
        except (TypeError, ValueError):
            example = fields[key].default if fields[key].default not in (dataclasses.MISSING, None) else "..."
            raise InputError(
                f"option {key}={text!r} of {owner} is not a valid {'finite ' if typ is float else ''}{typ.__name__}",
                fix=f"give {key} a {typ.__name__} value, e.g. --opt {key}={example}",
            ) from None
    try:
        return options_cls(**values)
    except ValueError as e:
        raise InputError(f"options of {owner}: {e}", fix=help_hint or f"see the options of {owner} in the docs") from None


def describe(options_cls: type) -> str:
    """``"blocksize=128, damp=0.01"``: the options and their defaults, for help texts and errors."""
    parts = []
    for f in dataclasses.fields(options_cls):
        if f.init:
            parts.append(f"{f.name}={f.default}" if f.default is not dataclasses.MISSING else f.name)
    return ", ".join(parts) or "none"
