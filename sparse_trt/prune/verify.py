"""Check a pruned checkpoint against its manifest: coverage, then every pruned matrix's pattern.

Coverage: every target linear of the model (found by its adapter on a weightless skeleton built from
config.json) must be in the manifest, pruned to its pattern or dense on purpose (plan), or listed as
excluded; a manifest that leaves linears out proves nothing about them. The weights are read from
the safetensors files directly (no weights are loaded into a model), so it is fast at any size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparse_trt.core.errors import InputError, ManifestError, ModelLoadError, VerificationError
from sparse_trt.core.manifest import Manifest
from sparse_trt.core.patterns import NM, Unstructured, nm_violations, parse_pattern
from sparse_trt.models.safetensors_io import WeightIndex


@dataclass(frozen=True)
class LayerCheck:
    name: str
    pattern: str | None
    sparsity: float
    violations: int  # N:M groups with too many non-zeros, or rows below the sparsity target
    ok: bool
    problem: str = ""


UNCOVERED = "not in the manifest: neither pruned, dense by plan, nor excluded"
UNKNOWN = "not a target linear of this model (the manifest belongs to another model?)"


@dataclass(frozen=True)
class VerifyReport:
    directory: str
    method: str
    pattern: str
    layers: tuple[LayerCheck, ...]
    uncovered: tuple[str, ...] = ()  # target linears of the model the manifest does not account for
    unknown: tuple[str, ...] = ()  # manifest entries that are not target linears of the model
    inconsistent: tuple[str, ...] = ()  # entries whose weight is missing or whose shape / input dim disagree
    pruned: int = 0  # linears the manifest says carry a pattern
    excluded: int = 0

    @property
    def covered(self) -> bool:
        return not self.uncovered and not self.unknown and not self.inconsistent and self.pruned > 0

    @property
    def ok(self) -> bool:
        return self.covered and all(c.ok for c in self.layers)

    @property
    def failures(self) -> list[LayerCheck]:
        return [c for c in self.layers if not c.ok]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["covered"] = self.covered
        return d

    def raise_for_failures(self) -> None:
        """ManifestError (exit 3) when the manifest does not cover the model; VerificationError (exit 4)
        when a weight breaks its pattern."""
        fix = f"re-run `sparse-trt prune` to write '{self.directory}' again"
        if self.uncovered or self.unknown or self.inconsistent:
            parts = []
            if self.inconsistent:
                bad = next(c for c in self.layers if c.name == self.inconsistent[0])
                parts.append(f"{len(self.inconsistent)} of its entries disagree with the weights (e.g. {bad.name}: {bad.problem})")
            if self.uncovered:
                parts.append(f"{len(self.uncovered)} target linear(s) are missing from it (e.g. {self.uncovered[0]})")
            if self.unknown:
                parts.append(f"{len(self.unknown)} of its entries are not linears of this model (e.g. {self.unknown[0]})")
            raise ManifestError(f"the manifest of '{self.directory}' does not cover the model: {'; '.join(parts)}", fix=fix)
        if self.pruned == 0:
            raise ManifestError(f"the manifest of '{self.directory}' claims {self.pattern} but no linear in it "
                                "carries a pattern: nothing was pruned or verified", fix=fix)
        bad = self.failures
        if bad:
            raise VerificationError(
                f"{len(bad)} of {len(self.layers)} linears in '{self.directory}' violate their pattern "
                f"(first: {bad[0].name}: {bad[0].problem})", fix=fix)


def open_weights(directory: Path) -> WeightIndex:
    """The folder's safetensors (index or single file, models.safetensors_io); unreadable weights make the
    pruned folder untrustworthy: a manifest-level error (exit 3)."""
    try:
        return WeightIndex.open(directory)
    except ModelLoadError as e:
        raise ManifestError(f"the weights of '{directory}' are unreadable: {e.message}", fix="re-run `sparse-trt prune`") from None


def model_targets(directory: Path, trust_remote_code: bool = False) -> dict[str, int]:
    """Target linear name -> input dim, from the model's adapter on a weightless (meta) skeleton."""
    from transformers import AutoModelForCausalLM

    from sparse_trt.models.adapters import adapter_for, all_targets
    from sparse_trt.models.loading import load_config, resolve_source

    config = load_config(resolve_source(str(directory)), trust_remote_code)
    adapter = adapter_for(getattr(config, "model_type", "?"))
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise ModelLoadError(f"could not build the model of '{directory}' from its config.json: {e}",
                             fix="check config.json") from None
    return {t.name: t.in_dim for t in all_targets(model, adapter)}


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


def verify_dir(directory: Path, trust_remote_code: bool = False) -> VerifyReport:
    directory = Path(directory)
    if not directory.exists():
        raise InputError(f"'{directory}' does not exist", fix="pass the output folder of `sparse-trt prune`")
    if not directory.is_dir():
        raise InputError(f"'{directory}' is not a folder", fix="pass the output folder of `sparse-trt prune`")
    manifest = Manifest.load(directory)
    targets = model_targets(directory, trust_remote_code)
    weights = open_weights(directory)
    checks: list[LayerCheck] = []
    listed = {r.name for r in manifest.layers} | set(manifest.excluded)
    uncovered = tuple(n for n in targets if n not in listed)
    unknown = tuple(sorted(listed - set(targets)))
    inconsistent: list[str] = []
    try:
        for name in uncovered:
            w = weights.find(f"{name}.weight")
            sp = 0.0 if w is None else float((w == 0).float().mean())
            checks.append(LayerCheck(name, None, sp, 0, False, UNCOVERED))
        for name in unknown:
            checks.append(LayerCheck(name, None, 0.0, 0, False, UNKNOWN))
        for rec in manifest.layers:
            if rec.name not in targets:
                continue  # reported above as unknown
            if rec.in_dim != targets[rec.name]:
                checks.append(LayerCheck(rec.name, rec.pattern, 0.0, 0, False,
                                         f"manifest in_dim {rec.in_dim}, but the model's input dim is {targets[rec.name]}"))
                inconsistent.append(rec.name)
                continue
            w = weights.find(f"{rec.name}.weight")
            if w is None:
                checks.append(LayerCheck(rec.name, rec.pattern, 0.0, 0, False, "weight missing from the checkpoint"))
                inconsistent.append(rec.name)
                continue
            if tuple(w.shape) != tuple(rec.shape):
                checks.append(LayerCheck(rec.name, rec.pattern, 0.0, 0, False, f"shape {tuple(w.shape)} != manifest {tuple(rec.shape)}"))
                inconsistent.append(rec.name)
                continue
            checks.append(check_weight(rec.name, w, rec.pattern, rec.in_dim))
    except ModelLoadError as e:
        raise ManifestError(f"weights in '{directory}' are unreadable ({e.message})", fix="re-run `sparse-trt prune`") from None
    return VerifyReport(str(directory), manifest.method, manifest.pattern, tuple(checks), uncovered, unknown, tuple(inconsistent),
                        pruned=sum(r.pattern is not None for r in manifest.layers), excluded=len(manifest.excluded))
