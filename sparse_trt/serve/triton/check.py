"""Re-read a model repository and check it the way Triton would, before a server is started.

Every ``config.pbtxt`` is parsed strictly as a ``ModelConfig`` (unknown fields are errors), leftover
template placeholders (``${...}``) are refused, and each ensemble's wiring is followed: every step model
exists, every mapped input/output exists on that model with the same data type and compatible dims,
every required input is fed, every intermediate tensor has exactly one producer, and every ensemble
output is produced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import pbtxt
from .errors import TritonRepoError
from .names import validate_model_name

_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")


@dataclass
class CheckReport:
    path: Path
    models: dict[str, object] = field(default_factory=dict)  # name -> ModelConfig
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def entry_points(self) -> list[str]:
        """Models no ensemble in the repository uses as a step (what clients call)."""
        used = {s.model_name for c in self.models.values() for s in c.ensemble_scheduling.step}
        return [n for n in self.models if n not in used]


def _dims_ok(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _fmt(dtype: int, dims) -> str:
    return f"{pbtxt.type_name(dtype)} {list(dims)}"


def check_repo(path: Path) -> CheckReport:
    """Check the repository; the report lists problems (fatal) and warnings. Raises only if it is no repository."""
    root = Path(path)
    if not root.is_dir():
        raise TritonRepoError(f"model repository '{root}' does not exist or is not a folder",
                              fix="pass the folder written by `sparse-trt triton repo`")
    rep = CheckReport(root)
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any((d / "config.pbtxt").is_file() for d in dirs):
        raise TritonRepoError(f"'{root}' holds no model folders with a config.pbtxt",
                              fix="pass the repository root (the folder that contains one folder per model)")
    for d in dirs:
        cfg_path = d / "config.pbtxt"
        if not cfg_path.is_file():
            rep.problems.append(f"{d.name}/: no config.pbtxt")
            continue
        try:
            validate_model_name(d.name, what="model folder")
        except TritonRepoError as e:
            rep.problems.append(e.message)
            continue
        text = cfg_path.read_text(encoding="utf-8", errors="replace")
        left = sorted(set(_PLACEHOLDER.findall(text)))
        if left:
            rep.problems.append(f"{d.name}/config.pbtxt: unfilled placeholders {', '.join(left)}")
        try:
            cfg = pbtxt.parse_text(text, f"{d.name}/config.pbtxt")
        except TritonRepoError as e:
            rep.problems.append(e.message)
            continue
        rep.models[d.name] = cfg
        _check_model(rep, d, cfg)
    for name, cfg in rep.models.items():
        if cfg.platform == "ensemble":
            _check_ensemble(rep, name, cfg)
        target = cfg.parameters.get("tensorrt_llm_model_name")  # a BLS model names the model it calls
        if target is not None and target.string_value and target.string_value not in rep.models:
            rep.problems.append(f"{name}: parameter tensorrt_llm_model_name '{target.string_value}' is not a model "
                                "in the repository")
    return rep


def _check_model(rep: CheckReport, d: Path, cfg) -> None:
    n = d.name
    if cfg.name and cfg.name != n:
        rep.problems.append(f"{n}/config.pbtxt: name '{cfg.name}' differs from its folder name '{n}'")
    if not cfg.backend and not cfg.platform:
        rep.problems.append(f"{n}/config.pbtxt: neither backend nor platform is set")
    versions = [p for p in d.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        rep.problems.append(f"{n}/: no numeric version folder (e.g. {n}/1/)")
    if cfg.backend == "python":
        for v in versions:
            if not (v / "model.py").is_file():
                rep.problems.append(f"{n}/{v.name}/: the python backend needs a model.py")
    seen: set[str] = set()
    for t in list(cfg.input) + list(cfg.output):
        if not t.name:
            rep.problems.append(f"{n}/config.pbtxt: a tensor has no name")
        if t.data_type == 0:
            rep.problems.append(f"{n}/config.pbtxt: tensor '{t.name}' has no data_type")
        if not list(t.dims) and not t.HasField("reshape"):
            rep.problems.append(f"{n}/config.pbtxt: tensor '{t.name}' has no dims")
    for t in cfg.input:
        if t.name in seen:
            rep.problems.append(f"{n}/config.pbtxt: input '{t.name}' is declared twice")
        seen.add(t.name)
    if cfg.backend == "tensorrtllm":
        p = cfg.parameters.get("gpt_model_path")
        if p is None or not p.string_value:
            rep.problems.append(f"{n}/config.pbtxt: parameter gpt_model_path (the engine folder) is empty")
        elif not Path(p.string_value).is_dir():
            rep.warnings.append(f"{n}: engine folder {p.string_value} is not present on this machine")
    if cfg.backend == "python":
        for key in ("model_dir", "tokenizer_dir"):
            p = cfg.parameters.get(key)
            if p is not None and p.string_value and not Path(p.string_value).is_dir():
                rep.warnings.append(f"{n}: {key} {p.string_value} is not present on this machine")


def _check_ensemble(rep: CheckReport, name: str, ens) -> None:
    steps = list(ens.ensemble_scheduling.step)
    if not steps:
        rep.problems.append(f"{name}: ensemble has no steps")
        return
    # tensor name -> (dtype, dims, who)
    producers: dict[str, tuple[int, list[int], str]] = {}
    for t in ens.input:
        producers[t.name] = (t.data_type, list(t.dims), f"ensemble input '{t.name}'")
    optional_inputs = {t.name for t in ens.input if t.optional}
    consumed: set[str] = set()
    for i, s in enumerate(steps, 1):
        where = f"{name} step {i} ({s.model_name})"
        m = rep.models.get(s.model_name)
        if m is None:
            rep.problems.append(f"{where}: model '{s.model_name}' is not in the repository")
            continue
        if ens.max_batch_size > 0 and m.max_batch_size < ens.max_batch_size:
            rep.problems.append(f"{where}: max_batch_size {m.max_batch_size} is below the ensemble's {ens.max_batch_size}")
        outs = {t.name: t for t in m.output}
        for key, tensor in s.output_map.items():
            o = outs.get(key)
            if o is None:
                rep.problems.append(f"{where}: output_map key '{key}' is not an output of {s.model_name}")
                continue
            if tensor in producers:
                rep.problems.append(f"{where}: tensor '{tensor}' is already produced by {producers[tensor][2]}")
                continue
            producers[tensor] = (o.data_type, list(o.dims), f"{s.model_name}.{key}")
    for i, s in enumerate(steps, 1):
        where = f"{name} step {i} ({s.model_name})"
        m = rep.models.get(s.model_name)
        if m is None:
            continue
        ins = {t.name: t for t in m.input}
        for key, tensor in s.input_map.items():
            t = ins.get(key)
            if t is None:
                rep.problems.append(f"{where}: input_map key '{key}' is not an input of {s.model_name}")
                continue
            consumed.add(tensor)
            src = producers.get(tensor)
            if src is None:
                rep.problems.append(f"{where}: input '{key}' reads tensor '{tensor}', which nothing produces")
                continue
            if src[0] != t.data_type or not _dims_ok(src[1], t.dims):
                rep.problems.append(f"{where}: input '{key}' is {_fmt(t.data_type, t.dims)} but '{tensor}' "
                                    f"({src[2]}) is {_fmt(src[0], src[1])}")
            if tensor in optional_inputs and not t.optional:
                rep.problems.append(f"{where}: required input '{key}' is fed from optional ensemble input '{tensor}'")
        for key, t in ins.items():
            if key not in s.input_map and not t.optional:
                rep.problems.append(f"{where}: required input '{key}' of {s.model_name} is not mapped")
    for t in ens.output:
        src = producers.get(t.name)
        if src is None or src[2].startswith("ensemble input"):
            rep.problems.append(f"{name}: ensemble output '{t.name}' is not produced by any step")
        elif src[0] != t.data_type or not _dims_ok(src[1], t.dims):
            rep.problems.append(f"{name}: output '{t.name}' is {_fmt(t.data_type, t.dims)} but {src[2]} gives "
                                f"{_fmt(src[0], src[1])}")
    for t in ens.input:
        if t.name not in consumed:
            rep.warnings.append(f"{name}: ensemble input '{t.name}' is not used by any step")
