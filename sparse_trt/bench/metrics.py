"""Metrics of measured windows, defined as NVIDIA's AIPerf defines them (formulas in docs/bench.md).

Per sequence (one sequence = one AIPerf request):

* TTFT = first token received - request sent
* e2e request latency = last token received - request sent
* ITL (inter-token latency) = (e2e - TTFT) / (output tokens - 1), sequences with >= 2 tokens
* output token throughput per user = 1 / ITL
* inter-chunk latency = gaps between consecutive streamed chunks (tokens arriving at the same instant
  form one chunk), all sequences pooled

Per point, over its measured window(s) (first request sent -> last response received):

* output token throughput = all output tokens / window
* total token throughput = (input + output tokens) / window
* request throughput = sequences / window
"""

from __future__ import annotations

from collections.abc import Sequence

from .backends.base import SequenceTiming
from .loadgen import Window
from .results import Conditions, LoadSettings, MemoryStats, PointResult, ServerMemory
from .timing import Summary
from .workload import Workload


def ttft(s: SequenceTiming) -> float:
    return s.first_token - s.start


def e2e(s: SequenceTiming) -> float:
    return s.end - s.start


def itl(s: SequenceTiming) -> float | None:
    return (s.end - s.first_token) / (s.output_tokens - 1) if s.output_tokens > 1 else None


def per_user(s: SequenceTiming) -> float | None:
    v = itl(s)
    return 1.0 / v if v is not None and v > 0 else None


def chunk_gaps(s: SequenceTiming) -> list[float]:
    chunks = [t for i, t in enumerate(s.token_times) if i == 0 or t != s.token_times[i - 1]]
    return [b - a for a, b in zip(chunks, chunks[1:], strict=False)]


def mean_of(seqs: Sequence[SequenceTiming], fn) -> float:
    vals = [v for v in (fn(s) for s in seqs) if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def summarise(w: Workload, load: LoadSettings, windows: list[Window], *, memory: MemoryStats | None,
              conditions: Conditions, server_memory: ServerMemory | None = None) -> PointResult:
    seqs = [s for win in windows for s in win.sequences]
    secs = [win.seconds for win in windows]
    total = sum(secs)
    out_tok = sum(s.output_tokens for s in seqs)
    in_tok = sum(s.input_tokens for s in seqs)

    def per_s(x: float) -> float:
        return x / total if total > 0 else float("nan")

    return PointResult(
        workload=w,
        load=load,
        requests=sum(len(win.records) for win in windows),
        sequences=len(seqs),
        input_tokens=in_tok,
        output_tokens=out_tok,
        window_s=total,
        ttft_s=Summary.of([ttft(s) for s in seqs]),
        itl_s=Summary.of([v for v in (itl(s) for s in seqs) if v is not None]),
        inter_chunk_s=Summary.of([g for s in seqs for g in chunk_gaps(s)]),
        e2e_s=Summary.of([e2e(s) for s in seqs]),
        output_tokens_per_s_per_user=Summary.of([v for v in (per_user(s) for s in seqs) if v is not None]),
        output_token_throughput=per_s(out_tok),
        total_token_throughput=per_s(in_tok + out_tok),
        request_throughput=per_s(len(seqs)),
        memory=memory,
        conditions=conditions,
        server_memory=server_memory,
        window_list_s=secs,
        window_output_tokens=[win.output_tokens for win in windows],
    )
