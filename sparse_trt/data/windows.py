"""Tokenised, seeded windows for calibration and evaluation."""

from __future__ import annotations

import random

import torch

from sparse_trt.core.errors import CalibrationError

from .text import TextSource, documents

SEPARATOR = "\n\n"


def _bos_id(tokenizer) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def token_stream(tokenizer, docs: list[str], limit: int | None = None) -> list[int]:
    """Concatenate documents (separated by a blank line) into one token list, up to ``limit`` tokens."""
    ids: list[int] = []
    batch = 64
    for start in range(0, len(docs), batch):
        chunk = [d + SEPARATOR for d in docs[start : start + batch]]
        enc = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for e in enc:
            ids.extend(e)
        if limit is not None and len(ids) >= limit:
            break
    return ids


def _windows(ids: list[int], seqlen: int, bos: int | None) -> tuple[int, int]:
    """(tokens of text per window, number of non-overlapping windows available)."""
    body = seqlen - (1 if bos is not None else 0)
    return body, len(ids) // body


def calibration_windows(
    tokenizer, src: TextSource, nsamples: int, seqlen: int, seed: int, add_bos: bool
) -> torch.Tensor:
    """``[nsamples, seqlen]`` token ids: distinct non-overlapping windows chosen with ``seed``."""
    if nsamples < 1:
        raise CalibrationError(f"nsamples={nsamples} must be at least 1", fix="e.g. --nsamples 128")
    if seqlen < 2:
        raise CalibrationError(f"seqlen={seqlen} must be at least 2", fix="e.g. --seqlen 2048")
    bos = _bos_id(tokenizer) if add_bos else None
    docs = documents(src, "calib")
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    needed = nsamples * (seqlen - (1 if bos is not None else 0))
    ids = token_stream(tokenizer, docs, limit=needed * 4)
    body, avail = _windows(ids, seqlen, bos)
    if avail < nsamples:
        raise CalibrationError(
            f"calibration text '{src.name}' has {len(ids)} tokens, but {nsamples} windows of {seqlen} need {needed}",
            fix="use a longer text, fewer --nsamples, or a shorter --seqlen",
        )
    starts = sorted(random.Random(seed).sample(range(avail), nsamples))
    rows = []
    for w in starts:
        row = ids[w * body : (w + 1) * body]
        rows.append(([bos] if bos is not None else []) + row)
    return torch.tensor(rows, dtype=torch.long)


def eval_windows(
    tokenizer, src: TextSource, seqlen: int, max_windows: int | None, add_bos: bool
) -> torch.Tensor:
    """``[n, seqlen]`` consecutive non-overlapping windows over the test text (first ``max_windows``)."""
    if seqlen < 2:
        raise CalibrationError(f"seqlen={seqlen} must be at least 2", fix="e.g. --seqlen 512")
    bos = _bos_id(tokenizer) if add_bos else None
    docs = documents(src, "test")
    body = seqlen - (1 if bos is not None else 0)
    limit = None if max_windows is None else (max_windows + 1) * body
    ids = token_stream(tokenizer, docs, limit=limit)
    n = len(ids) // body
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise CalibrationError(
            f"evaluation text '{src.name}' has {len(ids)} tokens, fewer than one window of {seqlen}",
            fix="use a longer text or a shorter --seqlen",
        )
    rows = [([bos] if bos is not None else []) + ids[i * body : (i + 1) * body] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long)


def tokenizer_adds_bos(tokenizer) -> bool:
    bos = _bos_id(tokenizer)
    if bos is None:
        return False
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # noqa: BLE001
        return False
    return bool(ids) and ids[0] == bos
