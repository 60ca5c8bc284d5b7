"""Atomic training checkpoints for a bit-identical ``recover --resume``.

They live in a hidden sibling of the output, ``.OUT.recover/``: ``state.json`` (the run's
fingerprint and the name of the newest complete checkpoint) and one folder per checkpoint with the
trainable weights (``trainable.safetensors``), and the optimizer, scheduler, RNG states, step and
history (``state.pt``). A checkpoint folder is written under a temporary name and renamed when
complete; ``state.json`` is then replaced atomically, and only after that is the previous
checkpoint removed, so an interruption at any moment leaves one complete checkpoint. The folder is
deleted once OUT is written.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sparse_trt.core.atomic import atomic_write_text
from sparse_trt.core.errors import ResumeError

STATE = "state.json"
WEIGHTS = "trainable.safetensors"
TRAIN_STATE = "state.pt"


def recover_dir(out: Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.recover"


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights."""

    step: int  # optimizer steps done
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    history: dict[str, Any]  # losses, curve points, elapsed seconds


class RecoverCheckpointer:
    def __init__(self, root: Path, fingerprint: dict[str, Any]):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.current: str | None = None

    @classmethod
    def open(cls, out: Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool) -> RecoverCheckpointer:
        root = recover_dir(out)
        ck = cls(root, fingerprint)
        state_file = root / STATE
        if root.exists():
            if resume and state_file.is_file():
                try:
                    state = json.loads(state_file.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as e:
                    raise ResumeError(f"resume state '{state_file}' is unreadable ({e})", fix=f"delete '{root}' and start again") from None
                old = state.get("fingerprint", {})
                if old != fingerprint:
                    diff = sorted(k for k in set(fingerprint) | set(old) if fingerprint.get(k) != old.get(k))
                    raise ResumeError(
                        f"the interrupted recovery in '{root}' used different settings ({', '.join(diff)})",
                        fix="resume with the same options, or drop --resume and pass --overwrite to start over",
                    )
                ck.current = state.get("current")
                return ck
            if not resume and not overwrite:
                raise ResumeError(
                    f"an interrupted recovery left checkpoints in '{root}'",
                    fix="pass --resume to continue it, or --overwrite to discard it and start over",
                )
            shutil.rmtree(root)
        elif resume:
            raise ResumeError(
                f"--resume was given but there is no interrupted recovery for this output ('{root}' does not exist)",
                fix="drop --resume to start a new recovery",
            )
        root.mkdir(parents=True)
        ck._write_state()
        return ck

    def _write_state(self) -> None:
        atomic_write_text(self.root / STATE, json.dumps({"fingerprint": self.fingerprint, "current": self.current}, indent=1))

    def save(self, params: list[tuple[str, nn.Parameter]], state: TrainState) -> None:
        name = f"step-{state.step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.root))
        try:
            save_file({n: p.detach().contiguous().cpu() for n, p in params}, str(tmp / WEIGHTS))
            torch.save(
                {"step": state.step, "optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng,
                 "history": json.dumps(state.history)},
                tmp / TRAIN_STATE,
            )
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        previous, self.current = self.current, name
        self._write_state()
        if previous and previous != name:
            shutil.rmtree(self.root / previous, ignore_errors=True)

    def load(self, params: list[tuple[str, nn.Parameter]]) -> TrainState | None:
        """Restore the weights of the newest checkpoint into ``params``; None when there is none yet."""
        if self.current is None:
            return None
        folder = self.root / self.current
        try:
            tensors = load_file(str(folder / WEIGHTS))
            raw = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise ResumeError(f"checkpoint '{folder}' is unreadable ({e})", fix=f"delete '{self.root}' and start again") from None
        missing = [n for n, _ in params if n not in tensors]
        if missing:
            raise ResumeError(f"checkpoint '{folder}' lacks {missing[:3]}", fix=f"delete '{self.root}' and start again")
        with torch.no_grad():
            for n, p in params:
                p.copy_(tensors[n])
        return TrainState(int(raw["step"]), raw["optimizer"], raw["scheduler"], raw["rng"], json.loads(raw["history"]))

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
