"""The recover job: pruned folder + dense teacher -> recovered folder (HF checkpoint + sparsity.json).

Steps: read the pruned folder's manifest (a dense folder has none: refused), load student and
teacher and check they are the same architecture with the same tokenizer, check the student holds
its pattern, draw training windows from the calibration side of the data (refusing held-out
overlap), measure held-out perplexity and KL to the teacher, distil (``train.py``), measure again,
check every mask held, and write OUT atomically; ``verify`` runs on the written folder before it
replaces OUT.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import sparse_trt
from sparse_trt.core.atomic import atomic_output_dir, check_output_dir
from sparse_trt.core.device import DTYPE_NAMES, dtype_name
from sparse_trt.core.errors import InputError, InterruptedRun, VerificationError
from sparse_trt.core.manifest import Manifest, RecoveryRecord
from sparse_trt.data.text import TextSource
from sparse_trt.data.windows import calibration_windows, eval_windows, tokenizer_adds_bos
from sparse_trt.eval.kl import KLResult, check_same_vocabulary, compare_to_reference
from sparse_trt.eval.perplexity import PerplexityResult
from sparse_trt.models.loading import LoadedModel, load_model
from sparse_trt.prune.verify import check_weight, verify_dir

from .checkpoint import RecoverCheckpointer
from .data import check_no_heldout_overlap
from .masks import SparsityMasks, trainable_parameters
from .train import StepInfo, TrainSettings, distill

MASTER_DTYPE = torch.float32  # weights are trained in float32 (autocast does the low-precision compute)


@dataclass(frozen=True)
class RecoverRequest:
    pruned: str
    out: Path
    teacher: str
    settings: TrainSettings = field(default_factory=TrainSettings)
    data: TextSource = TextSource("wiki")
    eval_data: TextSource = TextSource("wiki")
    eval_windows: int = 16  # held-out windows of settings.seqlen for before/after (0: skip)
    device: torch.device = torch.device("cpu")
    compute_dtype: torch.dtype | None = None  # autocast dtype (None: the master weights' float32)
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False


@dataclass
class RecoverOutcome:
    out: Path
    manifest: Manifest
    record: RecoveryRecord
    violations: int


def check_compatible(student: LoadedModel, teacher: LoadedModel, pruned: str, teacher_name: str, manifest: Manifest) -> None:
    """The teacher must be the dense model of the same architecture (same parameter names and shapes)."""
    s_cfg, t_cfg = student.model.config, teacher.model.config
    src = manifest.model.get("source")
    fix = f"pass the dense model the pruned folder was made from{f' (its sparsity.json names {src})' if src else ''}"

    def describe(cfg) -> str:
        return (f"{cfg.model_type}, {getattr(cfg, 'num_hidden_layers', '?')} layers, hidden "
                f"{getattr(cfg, 'hidden_size', '?')}, vocab {getattr(cfg, 'vocab_size', '?')}")

    s_shapes = {n: tuple(p.shape) for n, p in student.model.named_parameters()}
    t_shapes = {n: tuple(p.shape) for n, p in teacher.model.named_parameters()}
    if s_cfg.model_type != t_cfg.model_type or s_shapes != t_shapes:
        diff = sorted(n for n in set(s_shapes) | set(t_shapes) if s_shapes.get(n) != t_shapes.get(n))
        raise InputError(
            f"the teacher '{teacher_name}' ({describe(t_cfg)}) is not the same architecture as the pruned model "
            f"'{pruned}' ({describe(s_cfg)}): {len(diff)} parameter(s) differ, e.g. {diff[:3]}",
            fix=fix,
        )
    check_same_vocabulary(student.tokenizer, teacher.tokenizer, pruned, teacher_name)


def _check_pattern(student: LoadedModel, manifest: Manifest, pruned: str) -> None:
    modules = dict(student.model.named_modules())
    bad = []
    for rec in manifest.layers:
        if rec.pattern is None or rec.name not in modules:
            continue
        c = check_weight(rec.name, modules[rec.name].weight.detach(), rec.pattern, rec.in_dim)
        if not c.ok:
            bad.append(rec.name)
    if bad:
        raise VerificationError(
            f"'{pruned}' does not hold its pattern {manifest.pattern} in {len(bad)} linear(s), e.g. {bad[:3]}",
            fix=f"check it with `sparse-trt verify {pruned}` and re-run `sparse-trt prune`",
        )


def _fingerprint(req: RecoverRequest, n_params: int) -> dict[str, Any]:
    return {
        "pruned": str(Path(req.pruned).absolute()) if Path(req.pruned).exists() else req.pruned,
        "teacher": req.teacher,
        "data": req.data.name,
        "settings": req.settings.to_dict(),
        "compute_dtype": None if req.compute_dtype is None else dtype_name(req.compute_dtype),
        "device_type": req.device.type,
        "trainable_parameters": n_params,
    }


def run_recover(
    req: RecoverRequest,
    progress: Callable[[StepInfo], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RecoverOutcome:
    stage = on_stage or (lambda _s: None)
    s = req.settings
    if Path(req.out).absolute() == Path(req.pruned).absolute():
        raise InputError("the output folder is the pruned input folder", fix="write the recovered model to another folder (-o)")
    if not req.resume:
        check_output_dir(req.out, req.overwrite)
    if req.eval_windows < 0:
        raise InputError(f"--eval-windows {req.eval_windows} must be >= 0", fix="e.g. --eval-windows 16")
    manifest = Manifest.load(Path(req.pruned))  # a dense model has none: refused here
    check_no_heldout_overlap(req.data, req.eval_data)
    t_start = time.perf_counter()

    stage(f"loading {req.pruned} and the teacher {req.teacher}")
    student = load_model(req.pruned, dtype=MASTER_DTYPE, trust_remote_code=req.trust_remote_code)
    teacher = load_model(req.teacher, dtype=MASTER_DTYPE, trust_remote_code=req.trust_remote_code)
    check_compatible(student, teacher, req.pruned, req.teacher, manifest)
    _check_pattern(student, manifest, req.pruned)
    limit = student.adapter.max_context(student.model.config)
    if limit is not None and s.seqlen > limit:
        raise InputError(f"--seqlen {s.seqlen} exceeds the model's context of {limit} tokens", fix=f"use --seqlen {limit} or less")
    layers = student.adapter.layers(student.model)
    params = trainable_parameters(student.model, layers)
    masks = SparsityMasks.from_manifest(student.model, manifest)

    stage(f"tokenising training text ({req.data.name})")
    bos = student.adapter.needs_bos or tokenizer_adds_bos(student.tokenizer)
    train_windows = calibration_windows(student.tokenizer, req.data, s.windows, s.seqlen, s.seed, bos)
    held = eval_windows(student.tokenizer, req.eval_data, s.seqlen, req.eval_windows, bos) if req.eval_windows else None

    fingerprint = _fingerprint(req, sum(p.numel() for _, p in params))
    ck = RecoverCheckpointer.open(req.out, fingerprint, req.resume, req.overwrite)

    student.model.to(req.device)
    teacher.model.to(req.device)
    masks.to(req.device)

    def measure() -> dict[str, float]:
        if held is None:
            return {}
        c = compare_to_reference(student.model, teacher.model, held, req.device)
        return {"perplexity": math.exp(c.nll), "kl": c.kl, "teacher_perplexity": math.exp(c.reference_nll)}

    stage("measuring the pruned model on held-out text")
    before = measure()  # on the pruned weights as loaded (a resumed run loads its checkpoint in distill)
    stage("distilling")
    try:
        result = distill(
            student.model, teacher.model, train_windows, params, masks, s, req.device, req.compute_dtype,
            checkpointer=ck,
            evaluate=measure if held is not None else None,
            progress=progress,
        )
    except KeyboardInterrupt:
        raise InterruptedRun(
            f"recovery interrupted; the last checkpoint is in '{ck.root}'" if ck.current else "recovery interrupted before the first checkpoint",
            fix="re-run the same command with --resume to continue" if ck.current else "use --checkpoint-every K to be able to resume",
        ) from None
    stage("measuring the recovered model on held-out text")
    after = result.curve[-1] if result.curve and result.curve[-1].get("step") == result.steps else measure()
    after = {k: v for k, v in after.items() if k not in ("tokens", "step")}
    violations = masks.violations()
    if violations:
        raise VerificationError(f"{violations} pruned weights became non-zero during recovery", fix="this is a bug; please report it")

    teacher_ppl = (after or before).get("teacher_perplexity")
    heldout = {
        "data": req.eval_data.name,
        "windows": 0 if held is None else int(held.shape[0]),
        "seqlen": s.seqlen,
        "teacher_perplexity": teacher_ppl,
        "before": {k: v for k, v in before.items() if k != "teacher_perplexity"} or None,
        "after": {k: v for k, v in after.items() if k != "teacher_perplexity"} or None,
    }
    curve = tuple({k: v for k, v in p.items() if k != "teacher_perplexity"} for p in result.curve)
    if before and curve:
        curve = ({"tokens": 0, "step": 0, **heldout["before"]},) + curve
    record = RecoveryRecord(
        source=req.pruned,
        teacher=req.teacher,
        data=req.data.name,
        tokens=result.tokens,
        steps=result.steps,
        seqlen=s.seqlen,
        batch=s.batch,
        grad_accum=s.grad_accum,
        schedule={
            "optimizer": "AdamW", "lr": s.lr, "schedule": "cosine", "warmup": s.warmup, "warmup_steps": s.warmup_steps,
            "weight_decay": s.weight_decay, "temperature": s.temperature, "hidden_loss_weight": s.hidden_loss_weight,
            "max_grad_norm": s.max_grad_norm, "seed": s.seed, "gradient_checkpointing": s.gradient_checkpointing,
            "compute_dtype": dtype_name(req.compute_dtype) if req.compute_dtype is not None else dtype_name(MASTER_DTYPE),
            "device": str(req.device), "resumed_at_step": result.resumed_at,
        },
        heldout=heldout,
        seconds=round(result.train_seconds, 3),
        tokens_per_s=round(result.tokens / result.train_seconds, 2) if result.train_seconds > 0 else 0.0,
        curve=curve,
    )

    stage(f"writing {req.out}")
    save_dtype = DTYPE_NAMES.get(manifest.dtype, MASTER_DTYPE)
    student.model.to(save_dtype)  # save_pretrained copies from any device
    modules = dict(student.model.named_modules())
    layers_out = tuple(
        dataclasses.replace(r, sparsity=float((modules[r.name].weight == 0).float().mean())) if r.name in modules else r
        for r in manifest.layers
    )
    quality: dict[str, Any] = {}  # the one-shot figures no longer describe these weights
    if held is not None and after:
        n, toks = int(held.shape[0]), int(held.shape[0]) * (s.seqlen - 1)
        ppl, t_ppl = after["perplexity"], after["teacher_perplexity"]
        quality["perplexity"] = PerplexityResult(
            str(req.out), req.eval_data.name, s.seqlen, n, toks, math.log(ppl), ppl, bos).to_dict()
        quality["dense_perplexity"] = PerplexityResult(
            req.teacher, req.eval_data.name, s.seqlen, n, toks, math.log(t_ppl), t_ppl, bos).to_dict()
        quality["kl"] = KLResult(str(req.out), req.teacher, req.eval_data.name, s.seqlen, n, toks, after["kl"],
                                 math.log(ppl), ppl, math.log(t_ppl), t_ppl, bos).to_dict()
    new_manifest = dataclasses.replace(
        manifest,
        version=sparse_trt.__version__,
        layers=layers_out,
        quality=quality,
        recovery=record,
        timings={**manifest.timings, "recover_s": round(time.perf_counter() - t_start, 3)},
        device=str(req.device),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    with atomic_output_dir(req.out, overwrite=req.overwrite or req.resume) as tmp:
        student.model.save_pretrained(tmp, safe_serialization=True)
        if student.tokenizer is not None:
            student.tokenizer.save_pretrained(tmp)
        new_manifest.save(tmp)
        report = verify_dir(tmp)
        if not report.ok:
            raise VerificationError(
                f"the recovered weights violate {manifest.pattern} in {len(report.failures)} linear(s), e.g. "
                f"{[c.name for c in report.failures[:3]]}; nothing was written",
                fix="this is a bug; please report it",
            )
    ck.discard()
    return RecoverOutcome(Path(req.out), new_manifest, record, violations)
