"""Workload points (batch size x input length x output length x concurrency) and their limits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from sparse_trt.core.errors import InputError

from .errors import WorkloadError


@dataclass(frozen=True)
class Workload:
    """One workload point.

    A *request* is ``batch_size`` sequences submitted together (one generate call); ``concurrency``
    requests are in flight at once. Every sequence gets ``input_len`` prompt tokens and generates
    exactly ``output_len`` tokens (end-of-sequence is ignored, so token counts are exact).
    """

    batch_size: int
    input_len: int
    output_len: int
    concurrency: int = 1

    @property
    def sequences(self) -> int:
        return self.batch_size * self.concurrency

    @property
    def key(self) -> str:
        return f"b{self.batch_size}-in{self.input_len}-out{self.output_len}-c{self.concurrency}"


@dataclass(frozen=True)
class Limits:
    """What a backend can take; None = unknown / unlimited. ``source`` says where the limits come from."""

    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_concurrency: int | None = None
    source: str = ""


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; every value a positive integer, duplicates dropped, order kept."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise InputError(f"{what} is empty", fix=f"give a comma-separated list such as {what} 1,8")
    out: list[int] = []
    for t in items:
        try:
            v = int(t)
        except ValueError:
            raise InputError(f"{what} value '{t}' is not an integer", fix=f"e.g. {what} 1,8,32") from None
        if v <= 0:
            raise InputError(f"{what} value {v} must be positive", fix=f"e.g. {what} 1,8,32")
        if v not in out:
            out.append(v)
    return out


def grid(batch_sizes: list[int], input_lens: list[int], output_lens: list[int], concurrency: list[int]) -> list[Workload]:
    """The cartesian product, ordered by input length, output length, concurrency, then batch size."""
    return [
        Workload(b, i, o, c)
        for i, o, c, b in itertools.product(input_lens, output_lens, concurrency, batch_sizes)
    ]


def check_limits(points: list[Workload], limits: Limits, backend: str) -> None:
    """Refuse the whole workload up front if any point exceeds a known limit, naming the limit."""
    where = f" ({limits.source})" if limits.source else ""
    for p in points:
        if limits.max_seq_len is not None and p.input_len + p.output_len > limits.max_seq_len:
            raise WorkloadError(
                f"workload {p.key}: input_len + output_len = {p.input_len + p.output_len} exceeds the {backend} "
                f"max sequence length / context of {limits.max_seq_len} tokens{where}",
                fix=f"use --input-lens/--output-lens whose sum is at most {limits.max_seq_len}",
            )
        if limits.max_input_len is not None and p.input_len > limits.max_input_len:
            raise WorkloadError(
                f"workload {p.key}: input_len {p.input_len} exceeds the {backend} max_input_len of "
                f"{limits.max_input_len}{where}",
                fix=f"use --input-lens of at most {limits.max_input_len}, or rebuild the engine with a larger max_input_len",
            )
        if limits.max_batch_size is not None and p.batch_size > limits.max_batch_size:
            raise WorkloadError(
                f"workload {p.key}: batch size {p.batch_size} exceeds the {backend} max_batch_size of "
                f"{limits.max_batch_size}{where}",
                fix=f"use --batch-sizes of at most {limits.max_batch_size}, or rebuild the engine with a larger max_batch_size",
            )
        if limits.max_concurrency is not None and p.concurrency > limits.max_concurrency:
            raise WorkloadError(
                f"workload {p.key}: concurrency {p.concurrency} exceeds the {backend} limit of {limits.max_concurrency}{where}",
                fix=f"use --concurrency of at most {limits.max_concurrency}",
            )


def make_prompts(vocab_size: int, batch_size: int, input_len: int, seed: int, reserved: int = 3) -> list[list[int]]:
    """Deterministic random prompt token ids in [reserved, vocab_size) (skips the first special ids)."""
    lo = reserved if vocab_size > reserved + 1 else 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, vocab_size, (batch_size, input_len), generator=g)
    return ids.tolist()
