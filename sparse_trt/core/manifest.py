"""``sparsity.json``: what was pruned, how, and how well. Typed, versioned, strict on read."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError, PatternError
from .jsonio import read_json_object
from .patterns import Pattern, parse_pattern

MANIFEST_NAME = "sparsity.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CalibrationSpec:
    source: str
    nsamples: int
    seqlen: int
    seed: int


@dataclass(frozen=True)
class LayerRecord:
    """One pruned (or deliberately dense) linear."""

    name: str
    shape: tuple[int, ...]
    in_dim: int  # weight dimension the N:M groups run along (1 for nn.Linear, 0 for GPT-2 Conv1D)
    pattern: str | None  # None: kept dense on purpose (plan / exclude)
    sparsity: float
    rel_error: float | None = None  # ||W X - W' X||^2 / ||W X||^2 on calibration inputs
    damp: float | None = None  # final relative dampening (SparseGPT)
    damp_retries: int = 0
    seconds: float = 0.0
    # Block reconstruction (prune/blockfit.py): the decoder layer's relative output error vs its
    # reference before and after fitting the kept weights; one value per decoder layer, repeated
    # on each of its linears. Equal values: the fit did not help and was reverted.
    block_error_before: float | None = None
    block_error_after: float | None = None


@dataclass(frozen=True)
class RecoveryRecord:
    """``sparse-trt recover``: the kept weights were fine-tuned by distillation from a dense teacher, masks fixed."""

    source: str  # the pruned folder it started from
    teacher: str
    data: str  # training text ('wiki' = the calibration pool of the built-in corpus, or a file)
    tokens: int  # training tokens seen
    steps: int  # optimizer steps
    seqlen: int
    batch: int
    grad_accum: int
    schedule: dict[str, Any]  # optimizer, lr, warmup, weight decay, temperature, hidden-loss weight, seed
    heldout: dict[str, Any]  # held-out data, windows, and perplexity / mean token KL to the teacher before and after
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    curve: tuple[dict[str, Any], ...] = ()  # held-out perplexity / KL vs training tokens (if measured)


@dataclass(frozen=True)
class Manifest:
    tool: str
    version: str
    method: str
    method_options: dict[str, Any]
    pattern: str
    model: dict[str, Any]
    calibration: CalibrationSpec | None
    layers: tuple[LayerRecord, ...]
    excluded: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    created: str = ""
    quality: dict[str, Any] = field(default_factory=dict)
    # Where the walker's activations lived ("device" | "host" | "disk"), their bytes, and whether the
    # decoder layers were streamed from the checkpoint's shards (prune/activations.py, prune/streamout.py).
    memory: dict[str, Any] = field(default_factory=dict)
    recovery: RecoveryRecord | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: Path) -> Path:
        p = Path(directory) / MANIFEST_NAME
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        try:
            _reject_unknown(cls, d, source)
            if d.get("schema_version") != SCHEMA_VERSION:
                raise ManifestError(
                    f"{source}: schema_version {d.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})",
                    fix="re-run `sparse-trt prune` with this version of sparse_trt",
                )
            calib = d.get("calibration")
            if calib is not None:
                _reject_unknown(CalibrationSpec, calib, f"{source}: calibration")
                calib = CalibrationSpec(**calib)
            layers = []
            for rec in d["layers"]:
                _reject_unknown(LayerRecord, rec, f"{source}: layer")
                rec = dict(rec)
                rec["shape"] = tuple(rec["shape"])
                layers.append(LayerRecord(**rec))
            kw = dict(d)
            kw["calibration"] = calib
            kw["layers"] = tuple(layers)
            kw["excluded"] = tuple(d.get("excluded", ()))
            if d.get("recovery") is not None:
                _reject_unknown(RecoveryRecord, d["recovery"], f"{source}: recovery")
                rec = dict(d["recovery"])
                rec["curve"] = tuple(rec.get("curve", ()))
                kw["recovery"] = RecoveryRecord(**rec)
            m = cls(**kw)
            for text in (m.pattern, *(r.pattern for r in m.layers if r.pattern is not None)):
                try:
                    parse_pattern(text)
                except PatternError as e:
                    raise ManifestError(f"{source}: pattern {text!r} is invalid ({e.message})",
                                        fix="re-run `sparse-trt prune` to regenerate it") from None
            return m
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{source} is malformed: {e!r}", fix="re-run `sparse-trt prune` to regenerate it") from None

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        p = Path(directory) / MANIFEST_NAME
        if not p.is_file():
            raise ManifestError(
                f"no {MANIFEST_NAME} in '{directory}': this is not a sparse_trt-pruned model directory",
                fix="prune it first with `sparse-trt prune MODEL -o DIR`",
            )
        d = read_json_object(p, ManifestError, fix="re-run `sparse-trt prune` to regenerate it")
        return cls.from_dict(d, source=str(p))


def _reject_unknown(cls: type, d: dict[str, Any], source: str) -> None:
    if not isinstance(d, dict):
        raise ManifestError(f"{source}: expected an object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ManifestError(f"{source}: unknown field(s) {unknown}", fix="regenerate it with this sparse_trt version")
