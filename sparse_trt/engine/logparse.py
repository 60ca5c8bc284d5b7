"""Parse TensorRT / TensorRT-LLM build logs for the lines that say whether sparse kernels were used.

TensorRT prints two INFO lines per engine when weight sparsity is enabled (``BuilderFlag.SPARSE_WEIGHTS``,
what ``trtllm-build --weight_sparsity`` sets)::

    [MM/DD/YYYY-HH:MM:SS] [TRT] [I] (Sparsity) Layers eligible for sparse math: L1, L2, ...
    [MM/DD/YYYY-HH:MM:SS] [TRT] [I] (Sparsity) TRT inference plan picked sparse implementation for layers: L1, ...

(trtexec writes ``[I] [TRT]`` and TensorRT's older Python logger ``[TensorRT] INFO:``; the prefix is
not relied on.) TensorRT-LLM names its layers after the module path, e.g.
``transformer/layers/0/attention/qkv/.../MATRIX_MULTIPLY_0``, which maps each layer back to a linear.

Two naming cases need care:

* TensorRT-LLM 1.x fuses a gated MLP's two input projections into one GEMM (``use_fused_mlp``, on by
  default): ``transformer/layers/{i}/mlp/fused_fc/...`` carries both ``mlp.gate`` and ``mlp.fc``.
* TensorRT's Myelin compiler may swallow a whole region into one ``{ForeignNode[first...last]}`` layer;
  the GEMMs inside cannot be attributed one by one. Such names are kept (``foreign_nodes``) and never
  mapped to linears.

Every name that maps to no linear is kept (``unmapped``), so nothing TensorRT reported is silently lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ELIGIBLE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math:\s*(?P<layers>.*)$")
_PICKED = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers:\s*(?P<layers>.*)$")
_ENGINE_GEN = re.compile(r"Engine generation completed in (?P<s>[0-9.]+) seconds")
_TOTAL = re.compile(r"Total time of building all engines: (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)")
_TRTLLM_VERSION = re.compile(r"TensorRT[- ]LLM version: (?P<v>\S+)")
_ERROR = re.compile(r"(\[E\]|\bERROR\b|Traceback \(most recent call last\)|\w+Error: )")
_LINEAR = re.compile(
    r"(?:^|[/.])layers[/.](?P<i>\d+)[/.](?P<block>attention|mlp)[/.](?P<lin>qkv|dense|fused_fc|fc|gate|proj)(?=[/._]|$)")
_LM_HEAD = re.compile(r"(?:^|[/.])lm_head(?=[/._]|$)")
_FOREIGN = re.compile(r"^\{?ForeignNode\[")

#: TensorRT-LLM module names that stand for more than one checkpoint linear.
FUSED = {"fused_fc": ("gate", "fc")}  # FusedGatedMLP: concat(gate, fc) along the output dimension


def split_layers(text: str) -> list[str]:
    return [s.strip() for s in text.split(", ") if s.strip()]


def is_foreign_node(layer_name: str) -> bool:
    """A Myelin region (``{ForeignNode[a...b]}``): its GEMMs are not individually named."""
    return bool(_FOREIGN.match(layer_name.strip()))


def linears_of(layer_name: str) -> list[str]:
    """Checkpoint linears (``transformer.layers.{i}.{attention|mlp}.{name}`` or ``lm_head``) a TensorRT layer
    computes; empty when it maps to none (norms, attention plugins, Myelin regions, unknown names)."""
    if is_foreign_node(layer_name):
        return []
    m = _LINEAR.search(layer_name)
    if m:
        base = f"transformer.layers.{m.group('i')}.{m.group('block')}"
        return [f"{base}.{n}" for n in FUSED.get(m.group("lin"), (m.group("lin"),))]
    if _LM_HEAD.search(layer_name):
        return ["lm_head"]
    return []


def linear_of(layer_name: str) -> str | None:
    """The first linear of :func:`linears_of` (kept for callers that need one name), else None."""
    lins = linears_of(layer_name)
    return lins[0] if lins else None


@dataclass
class SparsityBlock:
    """The pair of (Sparsity) lines of one engine build (one per rank)."""

    eligible: list[str] = field(default_factory=list)
    picked: list[str] = field(default_factory=list)
    picked_seen: bool = False


def _parts(names: list[str]) -> list[str]:
    """TensorRT joins fused layers with ' + '; a ForeignNode name is kept whole."""
    out: list[str] = []
    for n in names:
        out += [n] if is_foreign_node(n) else [p.strip() for p in n.split(" + ") if p.strip()]
    return out


def mapped_linears(names: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for part in _parts(names):
        for lin in linears_of(part):
            seen[lin] = None
    return sorted(seen, key=linear_sort_key)


def unmapped_names(names: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for part in _parts(names):
        if not linears_of(part):
            seen[part] = None
    return list(seen)


def linear_sort_key(name: str) -> tuple:
    m = re.match(r"transformer\.layers\.(\d+)\.(.+)$", name)
    return (0, int(m.group(1)), m.group(2)) if m else (1, 0, name)


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

    @property
    def eligible_linears(self) -> list[str]:
        return mapped_linears(self.eligible)

    @property
    def picked_linears(self) -> list[str]:
        return mapped_linears(self.picked)

    @property
    def unmapped(self) -> list[str]:
        """Every eligible or picked TensorRT layer name that maps to no checkpoint linear."""
        return unmapped_names(self.eligible + self.picked)

    @property
    def foreign_nodes(self) -> list[str]:
        return [n for n in self.unmapped if is_foreign_node(n)]


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
