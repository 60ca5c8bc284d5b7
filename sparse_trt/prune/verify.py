"""Check every pruned matrix of a checkpoint against the pattern its manifest claims.

Reads the safetensors files directly (no model instantiation), so it is fast and works on any
checkpoint written by ``sparse-trt prune``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from sparse_trt.core.errors import ManifestError
from sparse_trt.core.jsonio import read_json_object
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import NM, Unstructured, nm_violations, parse_pattern


@dataclass(frozen=True)
class LayerCheck:
    name: str
    pattern: str | None
    sparsity: float
    violations: int  # N:M groups with too many non-zeros, or rows below the sparsity target
    ok: bool
    problem: str = ""


@dataclass(frozen=True)
class VerifyReport:
    directory: str
    method: str
    pattern: str
    layers: tuple[LayerCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.layers)

    @property
    def failures(self) -> list[LayerCheck]:
        return [c for c in self.layers if not c.ok]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def weight_files(directory: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the index or the single file."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        wm = read_json_object(index, ManifestError, fix="re-run `sparse-trt prune`").get("weight_map")
        if not isinstance(wm, dict):
            raise ManifestError(f"'{index}' has no weight_map", fix="re-run `sparse-trt prune`")
        return {k: directory / v for k, v in wm.items()}
    single = directory / "model.safetensors"
    if not single.is_file():
        raise ManifestError(f"no safetensors weights in '{directory}'", fix="re-run `sparse-trt prune`")
    with safe_open(str(single), "pt") as f:
        return {k: single for k in f.keys()}


def check_weight(name: str, w: torch.Tensor, pattern_text: str | None, in_dim: int) -> LayerCheck:
    sparsity = float((w == 0).float().mean())
    if pattern_text is None:
        return LayerCheck(name, None, sparsity, 0, True)
    pattern = parse_pattern(pattern_text)
    if isinstance(pattern, NM):
        v = nm_violations(w, pattern, in_dim)
        if v < 0:
            return LayerCheck(name, pattern_text, sparsity, 0, False, f"input dim not divisible by {pattern.m}")
        return LayerCheck(name, pattern_text, sparsity, v, v == 0, f"{v} groups of {pattern.m} hold more than {pattern.n} non-zeros" if v else "")
    assert isinstance(pattern, Unstructured)
    rows = w.movedim(in_dim, -1).reshape(-1, w.shape[in_dim])
    need = int(rows.shape[1] * pattern.sparsity)
    bad = int(((rows == 0).sum(dim=1) < need).sum())
    return LayerCheck(name, pattern_text, sparsity, bad, bad == 0, f"{bad} rows have fewer than {need} zeros" if bad else "")


def verify_dir(directory: Path) -> VerifyReport:
    directory = Path(directory)
    if not directory.is_dir():
        raise ManifestError(f"'{directory}' is not a directory", fix="pass the output folder of `sparse-trt prune`")
    manifest = Manifest.load(directory)
    files = weight_files(directory)
    checks: list[LayerCheck] = []
    handles: dict[Path, object] = {}
    try:
        for rec in manifest.layers:
            key = f"{rec.name}.weight"
            if key not in files:
                checks.append(LayerCheck(rec.name, rec.pattern, 0.0, 0, False, "weight missing from the checkpoint"))
                continue
            f = files[key]
            if f not in handles:
                handles[f] = safe_open(str(f), "pt")
            w = handles[f].get_tensor(key)  # type: ignore[attr-defined]
            if tuple(w.shape) != tuple(rec.shape):
                checks.append(LayerCheck(rec.name, rec.pattern, 0.0, 0, False, f"shape {tuple(w.shape)} != manifest {tuple(rec.shape)}"))
                continue
            checks.append(check_weight(rec.name, w, rec.pattern, rec.in_dim))
    except (OSError, RuntimeError) as e:
        raise ManifestError(f"weights in '{directory}' are unreadable ({e})", fix="re-run `sparse-trt prune`") from None
    return VerifyReport(str(directory), manifest.method, manifest.pattern, tuple(checks))
