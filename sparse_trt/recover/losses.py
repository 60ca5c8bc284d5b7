"""Distillation losses (pure tensor functions).

* ``distill_kl``: KL(teacher || student) of the next-token distributions at temperature ``T``,
  scaled by ``T**2`` (so gradients keep their size across temperatures), mean over tokens.
* ``hidden_state_loss``: SquareHead-like feature distillation: for each decoder layer, the mean over
  tokens of ``||h_s - h_t||^2 / ||h_t||^2`` (each token normalised by the teacher's own norm, so the
  few attention-sink tokens with huge hidden-state norms do not dominate), averaged over layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def distill_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, skip_first: int = 0
) -> torch.Tensor:
    """Mean over tokens of ``T^2 * KL(softmax(t/T) || softmax(s/T))``; logits ``[..., seq, vocab]``.

    Computed in float32 whatever the logits' dtype. ``skip_first`` positions are left out (e.g.
    a BOS position whose prediction is never used).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}")
    s = student_logits[..., skip_first:, :].float() / temperature
    t = teacher_logits[..., skip_first:, :].float() / temperature
    s = s.reshape(-1, s.shape[-1])
    t = t.reshape(-1, t.shape[-1])
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * (temperature**2)


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers and tokens of ``||s - t||^2 / ||t||^2`` (last dim = hidden), in float32."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"hidden states differ in number: student {len(student)}, teacher {len(teacher)}")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        s = s.float()
        t = t.float()
        tiny = torch.finfo(t.dtype).tiny
        total = total + ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(tiny)).mean()
    return total / len(student)
