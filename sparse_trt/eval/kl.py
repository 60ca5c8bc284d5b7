"""Mean token KL to a reference model on held-out text: the honest "how far from dense" number.

Perplexity can improve by fitting the evaluation text's domain; the KL divergence
``KL(p_ref || p_model)`` of the next-token distributions, averaged over every predicted position
of the held-out windows, only reaches 0 when the model predicts exactly what the reference does.
Both models see the same windows; the reference's logits are computed batch by batch (never
stored for the whole text). Accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparse_trt.core.errors import InputError, NumericalError


@dataclass(frozen=True)
class KLResult:
    model: str
    reference: str
    data: str
    seqlen: int
    windows: int
    tokens: int  # predicted positions
    kl: float  # mean KL(reference || model) per predicted token, in nats
    nll: float  # the model's mean NLL on the same tokens
    perplexity: float
    reference_nll: float
    reference_perplexity: float
    bos: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Sums over the windows, so results of several runs can be combined."""

    nll: float  # model's mean NLL
    reference_nll: float
    kl: float  # mean KL(reference || model)
    tokens: int


def compare_to_reference(
    model: nn.Module,
    reference: nn.Module,
    windows: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """NLL of both models and mean token KL(reference || model) over ``windows [n, seqlen]``.

    Targets are positions 1..seqlen-1 (a leading BOS is never a target), as in perplexity.
    """
    model.eval()
    reference.eval()
    nll = ref_nll = kl = 0.0
    count = 0
    n = windows.shape[0]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            ids = windows[start : start + batch_size].to(device)
            target = ids[:, 1:].reshape(-1)
            lm = model(input_ids=ids, use_cache=False).logits[:, :-1, :].float()
            lm = F.log_softmax(lm.reshape(-1, lm.shape[-1]), dim=-1)
            lr = reference(input_ids=ids, use_cache=False).logits[:, :-1, :].float()
            lr = F.log_softmax(lr.reshape(-1, lr.shape[-1]), dim=-1)
            if lm.shape != lr.shape:
                raise InputError(
                    f"the model predicts {lm.shape[-1]} tokens, the reference {lr.shape[-1]}: they do not share a vocabulary",
                    fix="compare models with the same tokenizer (e.g. a pruned model and the dense model it came from)",
                )
            step_kl = float((lr.exp() * (lr - lm)).sum(dtype=torch.float64))
            step_nll = float(-lm.gather(1, target[:, None]).sum(dtype=torch.float64))
            step_ref = float(-lr.gather(1, target[:, None]).sum(dtype=torch.float64))
            if not all(math.isfinite(v) for v in (step_kl, step_nll, step_ref)):
                raise NumericalError(f"window {start}: a loss is not finite", fix="evaluate in float32 (--dtype float32)")
            kl += step_kl
            nll += step_nll
            ref_nll += step_ref
            count += int(target.numel())
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return Comparison(nll / count, ref_nll / count, kl / count, count)


def to_kl_result(model: str, reference: str, data: str, windows: torch.Tensor, c: Comparison, bos: bool) -> KLResult:
    return KLResult(
        model, reference, data, int(windows.shape[1]), int(windows.shape[0]), c.tokens, c.kl, c.nll, math.exp(c.nll),
        c.reference_nll, math.exp(c.reference_nll), bos,
    )


def check_same_vocabulary(model_tok, reference_tok, model: str, reference: str) -> None:
    """Refuse a reference whose tokenizer splits text differently (the KL would compare different events)."""
    probe = "Sparse models, 2:4 patterns and Tensor Cores: 12345 tokens/s.\n"
    a = list(model_tok(probe, add_special_tokens=False)["input_ids"])
    b = list(reference_tok(probe, add_special_tokens=False)["input_ids"])
    if a != b or len(model_tok) != len(reference_tok):
        raise InputError(
            f"'{model}' and the reference '{reference}' do not use the same tokenizer",
            fix="compare a pruned model with the dense model it was made from",
        )


def run_kl(
    model: str,
    reference: str,
    data,
    seqlen: int,
    max_windows: int | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    trust_remote_code: bool = False,
) -> KLResult:
    """Load both models and compare them on the held-out windows of ``data`` (a TextSource)."""
    from sparse_trt.models.loading import load_model

    from .api import heldout_windows

    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    ref = load_model(reference, dtype=dtype, trust_remote_code=trust_remote_code)
    check_same_vocabulary(loaded.tokenizer, ref.tokenizer, model, reference)
    windows, bos = heldout_windows(loaded, data, seqlen, max_windows)
    loaded.model.to(device)
    ref.model.to(device)
    c = compare_to_reference(loaded.model, ref.model, windows, device, progress=progress)
    return to_kl_result(model, reference, data.name, windows, c, bos)
