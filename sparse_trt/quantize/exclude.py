"""``--exclude``: linears kept unquantized (in the input dtype), chosen by glob over module names.

A pattern matches a linear when ``fnmatch`` (case-sensitive) matches its full HF module name
(``model.layers.0.mlp.down_proj``) or its name inside the decoder layer (``mlp.down_proj``); a plain
pattern without glob characters also matches as a dotted suffix (``down_proj`` matches every
layer's ``...mlp.down_proj``). Pure functions over names: no model, no I/O.

TensorRT-LLM runs each fused group (q/k/v as ``attention.qkv``, gate/up as ``mlp.fc`` + ``mlp.gate``,
fused into one GEMM at build time for FP8) as one GEMM in one precision, so a pattern may exclude a
whole group or none of it, never part of one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from sparse_trt.core.errors import InputError

#: always excluded from quantization: TensorRT-LLM's and NVIDIA ModelOpt's default for LLaMA-family checkpoints
ALWAYS_EXCLUDED = ("lm_head",)
_GLOB = re.compile(r"[*?\[]")


def parse_excludes(patterns: Iterable[str]) -> tuple[str, ...]:
    """Normalise the user's ``--exclude`` values (stripped, duplicates dropped, empty refused)."""
    out: list[str] = []
    for p in patterns:
        s = str(p).strip()
        if not s:
            raise InputError("--exclude '' is empty", fix="pass a module name or glob, e.g. --exclude '*mlp.down_proj'")
        if s not in out:
            out.append(s)
    return tuple(out)


def _local(name: str, layers_prefix: str) -> str:
    return re.sub(rf"^{re.escape(layers_prefix)}\.\d+\.", "", name)


def matches(pattern: str, name: str, layers_prefix: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(_local(name, layers_prefix), pattern):
        return True
    return not _GLOB.search(pattern) and name.endswith("." + pattern)


def resolve_excludes(
    patterns: tuple[str, ...],
    names: list[str],
    group_of: dict[str, tuple[str, ...]],
    layers_prefix: str,
) -> tuple[str, ...]:
    """The quantizable linears (``names``, in model order) that ``patterns`` exclude.

    Refused: a pattern that matches no linear (the error lists a few valid names), a pattern set that
    excludes every linear (nothing would be quantized), and one that splits a fused group.
    """
    if not patterns:
        return ()
    excluded: set[str] = set()
    for pat in patterns:
        hit = [n for n in names if matches(pat, n, layers_prefix)]
        if not hit:
            short = list(dict.fromkeys(_local(n, layers_prefix) for n in names))
            raise InputError(
                f"--exclude '{pat}' matches no quantizable linear of this model",
                fix=f"linears are named like {', '.join(names[:3])} (inside a layer: {', '.join(short[:7])}); "
                    f"e.g. --exclude '*{short[-1]}' or --exclude '{names[0].rsplit('.', 2)[0]}.*'",
            )
        excluded.update(hit)
    for n in names:
        group = group_of.get(n, (n,))
        if n in excluded and not set(group) <= excluded:
            missing = [m for m in group if m not in excluded]
            raise InputError(
                f"--exclude keeps '{n}' unquantized but not {', '.join(missing)}: TensorRT-LLM runs "
                f"{', '.join(_local(m, layers_prefix) for m in group)} as one fused GEMM in one precision",
                fix="exclude the whole group, e.g. --exclude '" + "' --exclude '".join(f"*{_local(m, layers_prefix)}" for m in group) + "'",
            )
    if len(excluded) == len(names):
        raise InputError(
            f"--exclude {' '.join(patterns)} excludes every one of the {len(names)} quantizable linears: nothing would be quantized",
            fix="exclude only the sensitive linears (e.g. --exclude '*mlp.down_proj'), or export the model unquantized",
        )
    return tuple(n for n in names if n in excluded)
