"""Task accuracy beside perplexity: EleutherAI's lm-evaluation-harness on a (dense, pruned or recovered) model.

``lm_eval`` is an optional extra (``pip install 'sparse_trt[lm-eval]'``), imported lazily through
``core.deps.require``. The model is loaded by sparse_trt (so every supported family, GGUF and the
built-in names work) and handed to lm-eval's ``HFLM`` wrapper; tasks are whatever lm-eval's task
registry, the user's HF datasets cache or hub, or an ``include_path`` folder of task YAML files
provides (a local multiple-choice task in lm-eval's own format runs fully offline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparse_trt.core.deps import require
from sparse_trt.core.errors import InputError


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str  # e.g. acc, acc_norm
    value: float
    stderr: float | None


@dataclass(frozen=True)
class TasksResult:
    model: str
    tasks: tuple[str, ...]
    limit: int | None  # documents per task (None: all)
    num_fewshot: int | None
    scores: tuple[TaskScore, ...]
    lm_eval_version: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_scores(results: dict) -> tuple[TaskScore, ...]:
    """lm-eval's ``results`` ({task: {"acc,none": v, "acc_stderr,none": s, "alias": ...}}) -> typed scores."""
    out = []
    for task, metrics in sorted(results.items()):
        for key, value in sorted(metrics.items()):
            name, comma, _filt = key.partition(",")
            # metrics are "metric,filter" keys; others ("alias", lm-eval 0.4.13's "sample_len") are not scores
            if not comma or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            err = metrics.get(key.replace(name, f"{name}_stderr", 1))
            err = float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None
            out.append(TaskScore(task, name, float(value), err))
    return tuple(out)


def run_tasks(
    model: str,
    tasks: Sequence[str],
    device: torch.device,
    dtype: torch.dtype | None = None,
    include_path: Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    trust_remote_code: bool = False,
) -> TasksResult:
    lm_eval = require("lm_eval", "lm-evaluation-harness tasks (eval --tasks)")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sparse_trt.models.loading import load_model

    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise InputError("no task given", fix="e.g. --tasks hellaswag,arc_easy (or a task from --tasks-path)")
    if include_path is not None and not Path(include_path).is_dir():
        raise InputError(f"task folder '{include_path}' does not exist", fix="pass a folder of lm-eval task YAML files")
    tm = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise InputError(
            f"lm-eval does not know the task(s) {unknown}",
            fix="check the names with `lm-eval ls tasks`, or pass a folder of task YAML files with --tasks-path",
        )
    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    loaded.model.to(device)
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, device=str(device), batch_size=batch_size)
    res = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=tm, limit=limit, num_fewshot=num_fewshot, log_samples=False,
    )
    if not res or "results" not in res:
        raise InputError(f"lm-eval returned no results for {tasks}")
    version = getattr(lm_eval, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("lm_eval")
    return TasksResult(model, tuple(tasks), limit, num_fewshot, parse_scores(res["results"]), str(version))
