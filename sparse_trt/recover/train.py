"""The distillation loop: torch AdamW, transformers' cosine schedule with warm-up, masks fixed.

Each optimizer step takes ``grad_accum`` micro-batches of ``batch`` windows. For every micro-batch
the teacher's logits (and hidden states, if the hidden-state loss is on) are computed under
``no_grad`` and dropped after the step: they are streamed, never stored for the dataset. The
student runs with gradient checkpointing (``model.gradient_checkpointing_enable``) and, where a
compute dtype is given, under ``torch.autocast``; its master weights stay in their own dtype.
Gradients at pruned positions are zeroed before the step and the pruned positions are reset to
zero after it (``masks.py``), so every pruned weight is exactly zero after every step.

The window order is a permutation drawn from the seed, the position in it is the step count, and
checkpoints hold the optimizer, scheduler and RNG states: a resumed run is bit-identical to an
uninterrupted one (same device and settings).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sparse_trt.core.errors import InputError, NumericalError

from .checkpoint import RecoverCheckpointer, TrainState, rng_state, set_rng_state
from .losses import distill_kl, hidden_state_loss
from .masks import SparsityMasks


@dataclass(frozen=True)
class TrainSettings:
    tokens: int = 131072  # training tokens (rounded down to whole optimizer steps, at least one step)
    seqlen: int = 512
    batch: int = 4  # windows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak AdamW learning rate
    warmup: float = 0.05  # fraction of the optimizer steps spent warming up linearly
    weight_decay: float = 0.0  # AdamW decoupled weight decay on weight matrices (not norms / biases)
    temperature: float = 1.0
    hidden_loss_weight: float = 0.0  # weight of the normalised per-layer hidden-state loss (0: logits only)
    max_grad_norm: float = 1.0  # 0: no clipping
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: none)
    eval_every: int = 0  # optimizer steps between held-out measurements for the curve (0: before/after only)
    seed: int = 0
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.tokens >= 1, f"--tokens {self.tokens} must be at least 1", "e.g. --tokens 131072"),
            (self.seqlen >= 2, f"--seqlen {self.seqlen} must be at least 2", "e.g. --seqlen 512"),
            (self.batch >= 1, f"--batch {self.batch} must be at least 1", "e.g. --batch 4"),
            (self.grad_accum >= 1, f"--grad-accum {self.grad_accum} must be at least 1", "e.g. --grad-accum 1"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr {self.lr} must be positive", "e.g. --lr 1e-4"),
            (0 <= self.warmup < 1, f"--warmup {self.warmup} must be a fraction in [0, 1)", "e.g. --warmup 0.05"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay} must be >= 0", "e.g. --weight-decay 0.01"),
            (self.temperature > 0, f"--temperature {self.temperature} must be positive", "e.g. --temperature 1"),
            (self.hidden_loss_weight >= 0, f"--hidden-loss-weight {self.hidden_loss_weight} must be >= 0", "e.g. 0 or 1"),
            (self.max_grad_norm >= 0, f"max_grad_norm {self.max_grad_norm} must be >= 0", "use 0 to disable clipping"),
            (self.checkpoint_every >= 0, f"--checkpoint-every {self.checkpoint_every} must be >= 0", "0 disables checkpoints"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every} must be >= 0", "0 measures before and after only"),
        ]
        for ok, msg, fix in checks:
            if not ok:
                raise InputError(msg, fix=fix)

    @property
    def windows_per_step(self) -> int:
        return self.batch * self.grad_accum

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.seqlen * self.windows_per_step))

    @property
    def windows(self) -> int:
        return self.steps * self.windows_per_step

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.steps))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepInfo:
    """What the progress callback is told after each optimizer step."""

    step: int
    steps: int
    tokens: int  # training tokens so far
    loss: float  # this step's loss (mean over its micro-batches)
    lr: float
    tokens_per_s: float  # over this session (a resumed run counts from its restart)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    losses: list[float]
    curve: list[dict[str, Any]]
    train_seconds: float  # summed over sessions (resumes)
    resumed_at: int  # optimizer step a resumed run continued from (0: fresh)


Evaluate = Callable[[], dict[str, float]]  # held-out measurement of the student (perplexity, kl)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _checkpointing(model: nn.Module, on: bool) -> None:
    """transformers' gradient checkpointing (named ``activation_checkpointing_*`` from 5.x, ``gradient_*`` before)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _optimizer(params: list[tuple[str, nn.Parameter]], s: TrainSettings) -> torch.optim.AdamW:
    decay = [p for _, p in params if p.dim() >= 2]
    other = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=s.lr)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    windows: torch.Tensor,
    params: list[tuple[str, nn.Parameter]],
    masks: SparsityMasks,
    settings: TrainSettings,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    checkpointer: RecoverCheckpointer | None = None,
    evaluate: Evaluate | None = None,
    progress: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Distil ``teacher`` into the kept weights of ``student`` over ``windows [settings.windows, seqlen]``."""
    from transformers import get_cosine_schedule_with_warmup

    s = settings
    if windows.shape[0] < s.windows:
        raise InputError(f"{windows.shape[0]} training windows given, {s.windows} needed")
    if not params:
        raise InputError("nothing to train: the model has no decoder-layer parameters")
    for _, p in params:
        p.requires_grad_(True)
    teacher.eval()
    student.train()
    if s.gradient_checkpointing:
        _checkpointing(student, True)
    masks.apply()

    opt = _optimizer(params, s)
    sched = get_cosine_schedule_with_warmup(opt, s.warmup_steps, s.steps)
    order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(s.seed))[: s.windows]
    history: dict[str, Any] = {"losses": [], "curve": [], "train_seconds": 0.0}
    start = 0
    state = checkpointer.load(params) if checkpointer is not None else None
    if state is not None:
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        set_rng_state(state.rng, device)
        history = state.history
        start = state.step
    else:
        torch.manual_seed(s.seed)

    hidden = s.hidden_loss_weight > 0
    tokens_per_micro = s.batch * s.seqlen
    base_seconds = float(history.get("train_seconds", 0.0))
    session_start = time.perf_counter()
    eval_seconds = 0.0  # held-out measurements during training are not training time
    seen_here = 0

    def train_seconds() -> float:
        return base_seconds + (time.perf_counter() - session_start - eval_seconds)

    try:
        for step in range(start, s.steps):
            step_loss = 0.0
            for micro in range(s.grad_accum):
                k = (step * s.grad_accum + micro) * s.batch
                ids = windows[order[k : k + s.batch]].to(device)
                with torch.no_grad(), autocast_context(device, compute_dtype):
                    t_out = teacher(input_ids=ids, use_cache=False, output_hidden_states=hidden)
                with autocast_context(device, compute_dtype):
                    s_out = student(input_ids=ids, use_cache=False, output_hidden_states=hidden)
                    loss = distill_kl(s_out.logits, t_out.logits, s.temperature)
                    if hidden:
                        loss = loss + s.hidden_loss_weight * hidden_state_loss(s_out.hidden_states[1:], t_out.hidden_states[1:])
                if not torch.isfinite(loss):
                    raise NumericalError(
                        f"the distillation loss became {float(loss)} at step {step + 1}",
                        fix="lower --lr, or train in float32 (--dtype float32)",
                    )
                (loss / s.grad_accum).backward()
                step_loss += float(loss.detach()) / s.grad_accum
                del t_out, s_out, loss
                seen_here += tokens_per_micro
            masks.mask_grads()
            if s.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], s.max_grad_norm)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            masks.apply()
            history["losses"].append(step_loss)
            done = step + 1
            if progress is not None:
                rate = seen_here / max(time.perf_counter() - session_start - eval_seconds, 1e-9)
                progress(StepInfo(done, s.steps, done * s.windows_per_step * s.seqlen, step_loss, lr, rate))
            if evaluate is not None and s.eval_every and (done % s.eval_every == 0 or done == s.steps):
                t_eval = time.perf_counter()
                history["curve"].append({"tokens": done * s.windows_per_step * s.seqlen, "step": done, **evaluate()})
                student.train()
                eval_seconds += time.perf_counter() - t_eval
            if checkpointer is not None and s.checkpoint_every and done % s.checkpoint_every == 0 and done < s.steps:
                history["train_seconds"] = train_seconds()
                checkpointer.save(params, TrainState(done, opt.state_dict(), sched.state_dict(), rng_state(device), history))
    finally:
        if s.gradient_checkpointing:
            _checkpointing(student, False)
        student.eval()
        for _, p in params:
            p.requires_grad_(False)
            p.grad = None
    history["train_seconds"] = train_seconds()
    return TrainResult(s.steps, s.steps * s.windows_per_step * s.seqlen, list(history["losses"]), list(history["curve"]),
                       float(history["train_seconds"]), start)
