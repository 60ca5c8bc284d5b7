"""Parse TensorRT / TensorRT-LLM build logs for the lines that say whether sparse kernels were used.

TensorRT prints two INFO lines per engine when weight sparsity is enabled (``BuilderFlag.SPARSE_WEIGHTS``,
what ``trtllm-build --weight_sparsity`` sets)::

    [MM/DD/YYYY-HH:MM:SS] [TRT] [I] (Sparsity) Layers eligible for sparse math: L1, L2, ...
    [MM/DD/YYYY-HH:MM:SS] [TRT] [I] (Sparsity) TRT inference plan picked sparse implementation for layers: L1, ...

(trtexec writes ``[I] [TRT]`` and TensorRT's older Python logger ``[TensorRT] INFO:``; the prefix is
not relied on.) TensorRT-LLM names its layers after the module path, e.g.
``transformer/layers/0/attention/qkv/.../MATRIX_MULTIPLY_0``, which maps each layer back to a linear.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ELIGIBLE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math:\s*(?P<layers>.*)$")
_PICKED = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers:\s*(?P<layers>.*)$")
_ENGINE_GEN = re.compile(r"Engine generation completed in (?P<s>[0-9.]+) seconds")
_TOTAL = re.compile(r"Total time of building all engines: (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)")
_TRTLLM_VERSION = re.compile(r"TensorRT[- ]LLM version: (?P<v>\S+)")
_ERROR = re.compile(r"(\[E\]|\bERROR\b|Traceback \(most recent call last\)|\w+Error: )")
_LINEAR = re.compile(r"(?:^|[/.])layers[/.](?P<i>\d+)[/.](?P<block>attention|mlp)[/.](?P<lin>qkv|dense|fc|gate|proj)(?=[/._]|$)")
_LM_HEAD = re.compile(r"(?:^|[/.])lm_head(?=[/._]|$)")


def split_layers(text: str) -> list[str]:
    return [s.strip() for s in text.split(", ") if s.strip()]


def linear_of(layer_name: str) -> str | None:
    """``transformer.layers.{i}.{attention|mlp}.{name}`` (or ``lm_head``) for a TensorRT layer name, else None."""
    m = _LINEAR.search(layer_name)
    if m:
        return f"transformer.layers.{m.group('i')}.{m.group('block')}.{m.group('lin')}"
    if _LM_HEAD.search(layer_name):
        return "lm_head"
    return None


@dataclass
class SparsityBlock:
    """The pair of (Sparsity) lines of one engine build (one per rank)."""

    eligible: list[str] = field(default_factory=list)
    picked: list[str] = field(default_factory=list)
    picked_seen: bool = False


@dataclass
class BuildLog:
    blocks: list[SparsityBlock] = field(default_factory=list)
    engine_seconds: list[float] = field(default_factory=list)
    total_seconds: float | None = None
    trtllm_version: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def has_sparsity_lines(self) -> bool:
        return bool(self.blocks)

    @property
    def eligible(self) -> list[str]:
        return [x for b in self.blocks for x in b.eligible]

    @property
    def picked(self) -> list[str]:
        return [x for b in self.blocks for x in b.picked]

    @staticmethod
    def _linears(names: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for n in names:
            for part in n.split(" + "):
                lin = linear_of(part)
                if lin:
                    seen[lin] = None
        return sorted(seen, key=_linear_sort_key)

    @property
    def eligible_linears(self) -> list[str]:
        return self._linears(self.eligible)

    @property
    def picked_linears(self) -> list[str]:
        return self._linears(self.picked)

    def to_dict(self) -> dict:
        return {
            "sparsity_lines_found": self.has_sparsity_lines,
            "eligible_layers": self.eligible,
            "picked_layers": self.picked,
            "eligible_count": len(self.eligible),
            "picked_count": len(self.picked),
            "eligible_linears": self.eligible_linears,
            "picked_linears": self.picked_linears,
            "per_engine": [asdict(b) for b in self.blocks],
            "engine_generation_seconds": self.engine_seconds,
            "total_build_seconds_logged": self.total_seconds,
            "errors": self.errors[-20:],
        }


def _linear_sort_key(name: str) -> tuple:
    m = re.match(r"transformer\.layers\.(\d+)\.(.+)$", name)
    return (0, int(m.group(1)), m.group(2)) if m else (1, 0, name)


def parse_build_log(text: str) -> BuildLog:
    out = BuildLog()
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        m = _ELIGIBLE.search(line)
        if m:
            out.blocks.append(SparsityBlock(eligible=split_layers(m.group("layers"))))
            continue
        m = _PICKED.search(line)
        if m:
            if not out.blocks or out.blocks[-1].picked_seen:
                out.blocks.append(SparsityBlock())
            out.blocks[-1].picked = split_layers(m.group("layers"))
            out.blocks[-1].picked_seen = True
            continue
        m = _ENGINE_GEN.search(line)
        if m:
            out.engine_seconds.append(float(m.group("s")))
            continue
        m = _TOTAL.search(line)
        if m:
            out.total_seconds = int(m.group("h")) * 3600 + int(m.group("m")) * 60 + int(m.group("s"))
            continue
        m = _TRTLLM_VERSION.search(line)
        if m and out.trtllm_version is None:
            out.trtllm_version = m.group("v")
            continue
        if _ERROR.search(line):
            out.errors.append(line)
    return out
