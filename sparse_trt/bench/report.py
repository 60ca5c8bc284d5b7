"""Render results JSON files into a Markdown report plus PNG plots, answering one question:

    does this sparse model cut cost per useful token while keeping quality?

Only the results files are read (no live measurement). The sparse side is flagged loudly whenever it
ran no sparse kernels (hf backend, or an engine whose build_report says zero sparse layers), or when
that could not be verified; a speedup is claimed only when its bootstrap confidence interval lies
above 1 and sparse kernels ran. A comparison whose sparse side ran no sparse kernels is headed as
noise everywhere (tables, verdicts, plots).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sparse_trt.core.atomic import atomic_write_text
from sparse_trt.core.deps import require

from .conditions import describe as describe_conditions
from .errors import ResultsError
from .precision import SidePerplexity, hf_run_note, ran_as_stored, side_perplexity
from .results import Comparison, GemmResult, PairedRatio, PointResult, ResultsFile, RunResult

log = logging.getLogger(__name__)

#: a throughput ratio counts as a win only when its 95% interval lies above 1 and its estimate above 1 + this
WIN_MARGIN = 0.03


@dataclass
class Verdict:
    sparse_label: str
    dense_label: str
    kernels: str  # "ran" | "did not run" | "unverified"
    speed: str  # "faster" | "slower" | "inconclusive" | "not measured"
    quality: str  # "kept" | "degraded" | "not measured"
    best_cost_change: float | None  # e.g. -0.25 = 25 % cheaper per output token at the best point
    ppl_ratio: float | None
    answer: str  # one line
    reasons: list[str] = field(default_factory=list)


@dataclass
class ReportOutcome:
    markdown: Path
    plots: list[Path]
    verdicts: list[Verdict]


# ---------------------------------------------------------------------------------------------------
def load_results(paths: list[Path]) -> list[ResultsFile]:
    if not paths:
        raise ResultsError("no results files given", fix="sparse-trt report results.json [...] -o REPORT_DIR")
    files = [ResultsFile.load(Path(p)) for p in paths]
    if not any(f.runs or f.gemm for f in files):
        raise ResultsError(f"the results files {', '.join(map(str, paths))} hold no measured runs or GEMM rows",
                           fix="re-run the benchmark; a run that failed before its first point has nothing to report")
    return files


def perplexity_of(q: dict[str, Any], key: str = "perplexity") -> float | None:
    v = q.get(key)
    if isinstance(v, dict):
        v = v.get("perplexity")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def cost_per_million(usd_per_hour: float, tokens_per_s: float) -> float | None:
    if not tokens_per_s or not math.isfinite(tokens_per_s) or tokens_per_s <= 0:
        return None
    return usd_per_hour / 3600.0 / tokens_per_s * 1e6


def pattern_of(r: RunResult) -> str:
    """The run's pattern, and whether it was recovered by distillation (``sparse-trt recover``) or is one-shot."""
    rec = r.quality.get("recovery") if isinstance(r.quality, dict) else None
    if not r.pattern:
        return "dense"
    if isinstance(rec, dict):
        return f"{r.pattern}, recovered ({_fmt(rec.get('tokens'))} tokens from {rec.get('teacher')})"
    return f"{r.pattern}, one-shot"


def precision_key(run: RunResult) -> str:
    """What the side is, as ``bench compare`` compares it (bench/precision.py): the engine's precision (FP8,
    W8A8_SQ_PER_CHANNEL, or its dtype) from build_report.json, else the quant_algo of the folder's
    quantization.json (recorded in its quality), else the run's dtype; "?" when none is known."""
    ck = run.build_report.get("checkpoint") if isinstance(run.build_report, dict) else None
    p = ck.get("precision") if isinstance(ck, dict) else None
    if p:
        return str(p)
    quant = run.quality.get("quantization") if isinstance(run.quality, dict) else None
    if isinstance(quant, dict) and quant.get("quant_algo") and not ran_as_stored(run.quality):
        return str(quant["quant_algo"])
    return str(run.dtype or "?")


def precision_of(run: RunResult) -> str:
    """The precision for people: :func:`precision_key`, saying what hf / torch-2of4 computed with a quantized
    folder (FP8 GEMMs, or the stored weights and why; INT8-SQ: the weights ran unquantized, the quality is
    simulated, the timing is not)."""
    key = precision_key(run)
    quant = run.quality.get("quantization") if isinstance(run.quality, dict) else None
    if not isinstance(quant, dict):
        return key
    kept = [] if ran_as_stored(run.quality) else quant.get("excluded") or []
    if kept:  # quantize --exclude: these GEMMs run in 16-bit
        key += f", {len(kept)} linears kept unquantized (--exclude)"
    note = hf_run_note(run.backend, run.dtype, quant) if run.build_report is None else None
    return f"{key} ({note})" if note else key


def run_perplexity(run: RunResult) -> SidePerplexity:
    """The perplexity that stands for the run: a quantized side's simulated figure for its format (the eval
    key ``quality.perplexity_<format>_simulated``), falling back to the unquantized one with a note."""
    return side_perplexity(run.quality if isinstance(run.quality, dict) else {}, precision_key(run), perplexity_of)


def mixed_precision_line(cmp: Comparison, dense: RunResult | None, sparse: RunResult | None) -> str | None:
    """The bold "not like with like" line of a pair whose sides differ in precision, or None."""
    if dense is None or sparse is None or precision_key(dense) == precision_key(sparse):
        if cmp.mixed_precision:
            return f"Not like with like (compared on request with --allow-mixed-precision): {cmp.mixed_precision}."
        return None
    how = "compared on request with --allow-mixed-precision" if cmp.mixed_precision else "precisions differ"
    return (f"Not like with like ({how}): dense `{dense.label}` runs {precision_of(dense)}, sparse `{sparse.label}` "
            f"{precision_of(sparse)}; the ratios mix the effect of precision with that of sparsity. Compare equal "
            "precisions (FP8 sparse vs FP8 dense is the headline pair).")


def kernels_state(run: RunResult) -> str:
    a = run.sparse_kernels.active
    return "ran" if a is True else "did not run" if a is False else "unverified"


def human_seconds(v: float | None) -> str:
    """Seconds for people: 27312 ms -> '27.3 s', 0.0123 -> '12.3 ms', 4.2e-5 -> '42 µs'."""
    if v is None or not math.isfinite(v):
        return "–"
    a = abs(v)
    if a >= 120:
        return f"{v / 60:.3g} min"
    if a >= 1:
        return f"{v:.3g} s"
    if a >= 1e-3:
        return f"{v * 1e3:.3g} ms"
    if a == 0:
        return "0 s"
    return f"{v * 1e6:.3g} µs"


def human_number(v: float | None, digits: int = 3) -> str:
    """Plain numbers without exponents: 27312.4 -> '27,312', 0.0042 -> '0.0042', 12.345 -> '12.3'."""
    if v is None or not math.isfinite(v):
        return "–"
    a = abs(v)
    if a >= 10 ** digits:
        return f"{v:,.0f}"
    if a == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(a)))
    text = f"{v:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if decimals else text


def _fmt(v: float | None, unit: str = "", digits: int = 3) -> str:
    if unit == "s":
        return human_seconds(v)
    return human_number(v, digits)


def _gib(b: int | None) -> str:
    """Bytes in GiB, or MiB for small values (tiny models), with the unit."""
    if b is None:
        return "–"
    return f"{b / 2**30:.3f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"


NOISE_HEADING = ("NOISE BY CONSTRUCTION: the sparse side ran no sparse kernels (the same dense kernels as the "
                 "dense side), so these ratios measure run-to-run noise, not a speedup")


def ratio_words(r: PairedRatio, kind: str) -> str:
    """A paired ratio in words; never a bare number that reads as a speedup.

    ``kind`` is the comparison's kind: "sparse" (sparse kernels ran), "noise" (none ran), "unverified".
    Ratios are oriented so that >1 favours the sparse side.
    """
    if r.empty:
        return "–"
    conf = f"{r.confidence * 100:.0f}% CI"
    if not r.has_interval:
        return f"ratio {r.estimate:.2f} from {r.ratios.n} pair: no interval, no claim"
    ci = f"{conf} {r.ci_low:.2f}–{r.ci_high:.2f}"
    if r.contains_one:
        return f"no measurable difference ({ci})"
    if kind == "noise":
        return f"ratio {r.estimate:.2f} ({ci}): noise or a systematic effect, not sparsity"
    side = "sparse ahead" if r.estimate > 1 else "sparse behind"
    tail = "; sparse kernels unverified" if kind != "sparse" else ""
    return f"{side}: ratio {r.estimate:.2f} ({ci}{tail})"


def _speed_state(cmp: Comparison) -> str:
    r = [p.output_throughput_ratio for p in cmp.points if not p.output_throughput_ratio.empty]
    if not r:
        return "not measured"
    if cmp.kind == "noise":
        return "noise (no sparse kernels ran)"
    if any(s.has_interval and s.ci_low > 1.0 and s.estimate > 1 + WIN_MARGIN for s in r):
        return "faster"
    if all(s.has_interval and s.ci_high < 1.0 for s in r):
        return "slower"
    if all(s.contains_one for s in r):
        return "no measurable difference"
    return "inconclusive"


def verdict(cmp: Comparison, dense: RunResult | None, sparse: RunResult | None, max_ppl_increase: float) -> Verdict:
    reasons: list[str] = []
    kern = kernels_state(sparse) if sparse else "unverified"
    mixed = mixed_precision_line(cmp, dense, sparse)
    if mixed:
        reasons.append(mixed.replace("`", "'"))
    if sparse is not None and kern == "did not run":
        reasons.append(f"sparse side '{sparse.label}' ran NO sparse kernels ({sparse.sparse_kernels.kind})")
        cmp = replace(cmp, kind="noise")
    elif kern == "unverified":
        reasons.append("whether sparse kernels ran is not verified" +
                       (f" ({sparse.sparse_kernels.kind})" if sparse else ""))
    speed = _speed_state(cmp)
    best = None
    if cmp.kind != "noise":
        for p in cmp.points:
            s = p.output_throughput_ratio
            if s.has_interval and s.ci_low > 1.0 and s.estimate > 1 + WIN_MARGIN:
                change = 1.0 / s.estimate - 1.0
                best = change if best is None else min(best, change)
    q_sparse = sparse.quality if sparse else {}
    side_s = run_perplexity(sparse) if sparse else SidePerplexity(None, "")
    side_d = run_perplexity(dense) if dense else SidePerplexity(None, "")
    ppl_s = side_s.value
    ppl_d = side_d.value
    if ppl_d is None and side_s.label in ("", "unquantized"):  # the dense figure recorded beside the sparse one
        ppl_d = perplexity_of(q_sparse, "dense_perplexity")
    reasons += [f"{side} '{r.label}': {s.note}" for side, r, s in (("dense", dense, side_d), ("sparse", sparse, side_s))
                if r is not None and s.note]
    if side_s.label.endswith("simulated") or side_d.label.endswith("simulated"):
        reasons.append("perplexity: " + "; ".join(f"{side} {s.label or 'unquantized'}" for side, s in
                                                  (("dense", side_d), ("sparse", side_s))))
    ppl_ratio = ppl_s / ppl_d if ppl_s and ppl_d else None
    if ppl_ratio is None:
        quality = "not measured"
        reasons.append("perplexity of dense and/or sparse is missing: run `sparse-trt eval` on both (it records it in sparsity.json)")
    elif ppl_ratio <= 1 + max_ppl_increase:
        quality = "kept"
    else:
        quality = "degraded"
        reasons.append(f"perplexity rose x{ppl_ratio:.3f}, above the allowed x{1 + max_ppl_increase:.3f}")
    if kern == "did not run":
        answer = ("NO: the sparse side ran no sparse kernels, so it cannot cut cost; its timing differences from "
                  "dense are noise by construction.")
    elif mixed and speed in ("faster", "slower"):
        answer = (f"NOT LIKE WITH LIKE: {speed}, but the two sides compute in different precisions "
                  f"({precision_of(dense) if dense else '?'} dense, {precision_of(sparse) if sparse else '?'} sparse), "
                  "so the difference is not sparsity's.")
    elif speed == "faster" and quality == "kept" and kern == "ran":
        answer = f"YES: measured {-(best or 0) * 100:.0f}% lower cost per output token at the best point, perplexity x{ppl_ratio:.3f}."
    elif speed == "faster" and quality == "not measured":
        answer = "FASTER, QUALITY UNKNOWN: throughput gain measured (95% CI above 1), but no perplexity to show quality is kept."
    elif speed == "faster" and kern == "unverified":
        answer = "FASTER BUT UNVERIFIED: throughput gain measured (95% CI above 1), but it is not verified that sparse kernels ran."
    elif speed == "faster":
        answer = f"NO: faster, but quality is not kept (perplexity x{ppl_ratio:.3f})."
    elif speed == "slower":
        answer = "NO: the sparse model is slower at every measured point (95% CI below 1)."
    elif speed == "no measurable difference":
        answer = "NO MEASURABLE DIFFERENCE: at every point the 95% interval of the throughput ratio contains 1.0."
    elif speed == "inconclusive":
        answer = "NOT SHOWN: no point where the sparse model is faster beyond the measurement's confidence interval."
    else:
        answer = "NOT MEASURED: no paired throughput measurements."
    return Verdict(cmp.sparse_label, cmp.dense_label, kern, speed, quality, best, ppl_ratio, answer, reasons)


# ---------------------------------------------------------------------------------------------------
@dataclass
class _Collected:
    runs: list[RunResult]
    comparisons: list[tuple[Comparison, RunResult | None, RunResult | None]]
    gemm: list[GemmResult]
    files: list[ResultsFile]


def _collect(files: list[ResultsFile]) -> _Collected:
    runs: list[RunResult] = []
    comps = []
    gemm = []
    used: set[str] = set()
    for fi, f in enumerate(files):
        rename: dict[str, str] = {}
        for r in f.runs:
            label = r.label
            if label in used:
                label = f"{r.label} [{fi + 1}]"
            used.add(label)
            rename[r.label] = label
            runs.append(_relabel(r, label))
        by = {r.label: r for r in runs}
        for c in f.comparisons:
            dl, sl = rename.get(c.dense_label, c.dense_label), rename.get(c.sparse_label, c.sparse_label)
            comps.append((replace(c, dense_label=dl, sparse_label=sl, kind=_kind(c, by.get(sl))), by.get(dl), by.get(sl)))
        if f.gemm is not None:
            gemm.append(f.gemm)
    return _Collected(runs, comps, gemm, files)


def _kind(cmp: Comparison, sparse: RunResult | None) -> str:
    """The comparison's kind, trusting the sparse run's kernel record when there is one."""
    if sparse is not None:
        return {True: "sparse", False: "noise", None: "unverified"}[sparse.sparse_kernels.active]
    return cmp.kind


def _relabel(r: RunResult, label: str) -> RunResult:
    if r.label == label:
        return r
    from dataclasses import replace

    return replace(r, label=label)


def _banner(c: _Collected) -> list[str]:
    lines = []
    for r in c.runs:
        sparse_claim = bool(r.pattern) or any(r.label == cmp.sparse_label for cmp, _, _ in c.comparisons)
        if not sparse_claim:
            continue
        k = r.sparse_kernels
        if k.active is False:
            lines += [f"> ## ⚠️ NO SPARSE KERNELS RAN for `{r.label}` (backend `{r.backend}`)",
                      f"> {k.kind}. {k.detail}".rstrip(),
                      "> Its numbers measure dense kernels multiplying zeros: **no speedup can come from sparsity here.**", ">"]
        elif k.active is None:
            lines += [f"> ## ⚠️ SPARSE KERNELS NOT VERIFIED for `{r.label}` (backend `{r.backend}`)",
                      f"> {k.kind}. {k.detail}".rstrip(),
                      "> Treat any difference from dense as unexplained until a build report shows sparse layers.", ">"]
    return lines[:-1] if lines else []


def _memory_cells(p: PointResult) -> tuple[str, str, str]:
    """(device memory, host RSS with its scope, server memory with its source)."""
    mem = p.memory
    dev = host = "–"
    if mem is not None:
        dev_b = mem.torch_peak_allocated_bytes if mem.torch_peak_allocated_bytes is not None else mem.nvml_process_used_peak_bytes
        dev = _gib(dev_b)
        host = _gib(mem.host_peak_rss_bytes) + (f" ({mem.scope})" if mem.host_peak_rss_bytes is not None else "")
    srv = "–"
    if p.server_memory is not None and p.server_memory.peak_bytes is not None:
        srv = f"{_gib(p.server_memory.peak_bytes)} (server: {p.server_memory.source})"
    return dev, host, srv


def _point_rows(r: RunResult, usd: float, noise_cost: bool) -> list[str]:
    rows = []
    for p in r.points:
        w = p.workload
        tps = p.output_token_throughput
        dev, host, srv = _memory_cells(p)
        cost = _fmt(cost_per_million(usd, tps), digits=4)
        if noise_cost and cost != "–":
            cost += " (same kernels as dense: not a saving)"
        rows.append(
            f"| {w.batch_size} | {w.input_len} | {w.output_len} | {w.concurrency} | {p.sequences} | "
            f"{_fmt(p.ttft_s.p50, 's')} / {_fmt(p.ttft_s.p99, 's')} | {_fmt(p.itl_s.p50, 's')} / {_fmt(p.itl_s.p99, 's')} | "
            f"{_fmt(p.inter_chunk_s.p50, 's')} | {_fmt(p.e2e_s.p50, 's')} / {_fmt(p.e2e_s.p90, 's')} / {_fmt(p.e2e_s.p99, 's')} | "
            f"{_fmt(tps)} | {_fmt(p.output_tokens_per_s_per_user.p50)} | {_fmt(p.request_throughput)} | "
            f"{dev} | {host} | {srv} | {cost} |"
        )
    return rows


def _noise_run(r: RunResult, c: _Collected) -> bool:
    """A run on the sparse side of a comparison that ran no sparse kernels: its cost is not a saving."""
    return r.sparse_kernels.active is False and any(r.label == cmp.sparse_label for cmp, _, _ in c.comparisons)


def render_markdown(c: _Collected, usd: float, verdicts: list[Verdict], plots: list[Path], max_ppl_increase: float) -> str:
    L: list[str] = ["# sparse_trt benchmark report", ""]
    banner = _banner(c)
    if banner:
        L += banner + [""]
    L += ["## Does the sparse model cut cost per useful token while keeping quality?", ""]
    if verdicts:
        for v in verdicts:
            L.append(f"- **`{v.sparse_label}` vs `{v.dense_label}`: {v.answer}**")
            L.append(f"  - sparse kernels: {v.kernels}; speed: {v.speed}; quality: {v.quality}"
                     + (f" (perplexity x{v.ppl_ratio:.3f}, allowed x{1 + max_ppl_increase:.3f})" if v.ppl_ratio else ""))
            for reason in v.reasons:
                L.append(f"  - {reason}")
    else:
        L.append("No dense-vs-sparse comparison in these files (`sparse-trt bench compare` makes one); "
                 "absolute numbers below are not a verdict.")
    L.append("")
    L.append(f"Cost per million output tokens assumes **${usd:g} per device-hour** and the measured output token "
             "throughput (one device fully used by this workload).")
    L.append("")

    # quality beside speed and memory
    L += ["## Quality, speed and memory side by side", "",
          "| run | backend | pattern | precision | sparse kernels | perplexity | best output tok/s | weights | $ / 1M output tokens (at best) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in c.runs:
        best = max(r.points, key=lambda p: p.output_token_throughput if math.isfinite(p.output_token_throughput) else -1,
                   default=None)
        tps = best.output_token_throughput if best else None
        side = run_perplexity(r)
        ppl = side.value
        if ppl is None and not r.pattern and not side.label:
            for _cmp, d, s in c.comparisons:
                if d is r and s is not None and not run_perplexity(s).label:
                    ppl = perplexity_of(s.quality, "dense_perplexity")
        ppl_cell = _fmt(ppl, digits=4) + (f" ({side.label})" if side.label and ppl is not None else "")
        if side.note:
            ppl_cell += " — " + side.note
        k = r.sparse_kernels
        sparse_claim = bool(r.pattern) or any(r.label == cmp.sparse_label for cmp, _, _ in c.comparisons)
        ks = {True: f"yes ({k.sparse_layers}/{k.eligible_layers} layers)", False: "**NO**", None: "**unverified**"}[k.active]
        if not sparse_claim and k.active is not True:
            ks = "dense baseline"
        wb = best.memory.weights_bytes if best and best.memory else None
        cost = _fmt(cost_per_million(usd, tps) if tps else None, digits=4)
        if _noise_run(r, c) and cost != "–":
            cost += " (dense kernels, as the baseline: any difference is noise)"
        L.append(f"| {r.label} | {r.backend} | {pattern_of(r)} | {precision_of(r)} | {ks} | {ppl_cell} | {_fmt(tps)} | "
                 f"{_gib(wb)} | {cost} |")
    L.append("")

    if c.comparisons:
        L += ["## Dense vs sparse, paired windows", "",
              "Each pair is one dense and one sparse measured window run back to back (order alternating). "
              "A ratio is the geometric mean over pairs with its 95% bootstrap confidence interval (pairs resampled); "
              "throughput ratio = sparse / dense, latency speedups = dense / sparse, so >1 favours sparse. "
              "An interval that contains 1.0 is reported as no measurable difference.", ""]
        for cmp, _d, _s in c.comparisons:
            L += [f"### `{cmp.sparse_label}` vs `{cmp.dense_label}`", ""]
            mixed = mixed_precision_line(cmp, _d, _s)
            if mixed:
                L += [f"**{mixed}**", ""]
            if cmp.kind == "noise":
                L += [f"**{NOISE_HEADING}.**", ""]
            elif cmp.kind == "unverified":
                L += ["**Sparse kernels are unverified on the sparse side: a difference may not come from sparsity.**", ""]
            L += ["| workload | pairs | output tok/s (sparse / dense) | e2e latency | TTFT | ITL | cost change |",
                  "|---|---|---|---|---|---|---|"]
            for p in cmp.points:
                s = p.output_throughput_ratio
                if cmp.kind == "noise":
                    change = "none (no sparse kernels)"
                elif s.empty or s.contains_one:
                    change = "none measurable"
                else:
                    change = f"{(1 / s.estimate - 1) * 100:+.1f}%" + ("" if cmp.kind == "sparse" else " (unverified)")
                L.append(f"| {p.workload.key} | {p.pairs} | {ratio_words(s, cmp.kind)} | {ratio_words(p.e2e_speedup, cmp.kind)} | "
                         f"{ratio_words(p.ttft_speedup, cmp.kind)} | {ratio_words(p.itl_speedup, cmp.kind)} | {change} |")
            L.append("")

    for r in c.runs:
        L += [f"## Run `{r.label}`", "",
              f"backend `{r.backend}`, model `{r.model}`, device `{r.device}`, dtype `{r.dtype}`, status **{r.status}**"
              + (f" — error: {r.error}" if r.error else ""), "",
              f"sparse kernels: **{ {True: 'yes', False: 'NO', None: 'unverified'}[r.sparse_kernels.active] }** — "
              f"{r.sparse_kernels.kind}" + (f"; {r.sparse_kernels.detail}" if r.sparse_kernels.detail else ""), ""]
        if r.token_counts:
            L += [f"token counts: {r.token_counts}", ""]
        if r.build_report is not None:
            L += ["build_report.json: " + ", ".join(f"`{k}`" for k in sorted(r.build_report)[:15]), ""]
        L += ["| batch | input | output | conc. | sequences | TTFT p50 / p99 | ITL p50 / p99 | inter-chunk p50 | "
              "e2e p50 / p90 / p99 | output tok/s | tok/s per user p50 | req/s | device peak | host peak RSS | "
              "server memory | $ / 1M out |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        L += _point_rows(r, usd, _noise_run(r, c))
        L += [""] + [f"- `{p.workload.key}` ({p.load.mode}, {p.load.windows} window(s), {human_seconds(p.window_s)} measured, "
                     f"{p.load.warmup_requests} warm-up requests): {describe_conditions(p.conditions)}" for p in r.points]
        notes = sorted({n for p in r.points if p.memory is not None for n in p.memory.notes}
                       | {n for p in r.points if p.server_memory is not None for n in p.server_memory.notes})
        if notes:
            L += ["", "Memory notes: " + "; ".join(notes)]
        L.append("")

    for g in c.gemm:
        L += [f"## GEMM probe ({g.source}, device {g.device})", "",
              "| shape (out×in) | tokens | dtype | engine | dense p50 µs | 2:4 p50 µs | speedup | verdict / status |",
              "|---|---|---|---|---|---|---|---|"]
        for row in g.rows:
            if row.status == "ok" and row.speedup is not None:
                verdict_s = "sparse wins" if row.speedup > 1 + WIN_MARGIN else "dense wins" if row.speedup < 1 - WIN_MARGIN else "tie"
                L.append(f"| {row.shape[0]}×{row.shape[1]} | {row.tokens} | {row.dtype} | {row.engine} | "
                         f"{row.dense_s.p50 * 1e6:.1f} | {row.sparse_s.p50 * 1e6:.1f} | {row.speedup:.3f} | {verdict_s} |")
            else:
                L.append(f"| {row.shape[0]}×{row.shape[1]} | {row.tokens} | {row.dtype} | {row.engine} | – | – | – | {row.status} |")
        if g.onnx_checks:
            L += ["", "ONNX one-layer graphs (real 2:4 weights) checked on CPU:", "",
                  "| shape | dtype | checker | ORT max abs err | tolerance | zeros | passed |", "|---|---|---|---|---|---|---|"]
            for oc in g.onnx_checks:
                L.append(f"| {oc.shape[0]}×{oc.shape[1]} | {oc.dtype} | {oc.checker} | {_fmt(oc.onnxruntime_max_abs_err)} | "
                         f"{_fmt(oc.tolerance)} | {oc.sparse_fraction:.2f} | {'yes' if oc.passed else '**NO**'} |")
        for n in g.notes:
            L.append(f"- {n}")
        L.append("")

    if plots:
        L += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    L += ["## Environment", ""]
    for i, f in enumerate(c.files):
        e = f.environment
        L.append(f"- file {i + 1} ({f.kind}): {e.timestamp}, host `{e.hostname}`, CPU {e.cpu} ×{e.cpu_count}, "
                 f"GPU {e.gpu_name or 'none'} (driver {e.gpu_driver or '–'}, CUDA {e.cuda or '–'}, NVML {e.nvml}), "
                 f"torch {e.versions.get('torch')}, transformers {e.versions.get('transformers')}, "
                 f"TensorRT-LLM {e.versions.get('tensorrt_llm') or '–'}, sparse_trt {e.versions.get('sparse_trt')} "
                 f"@ {e.git_commit or '–'}")
        L.append(f"  - command: `{' '.join(e.command_line)}`")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------------------
def _plots(c: _Collected, out: Path) -> list[Path]:
    mpl = require("matplotlib", "PNG plots in reports")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def save(fig, name: str) -> None:
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=110, bbox_inches="tight")  # tight: long axis labels are never clipped
        plt.close(fig)
        paths.append(p)

    runs = [r for r in c.runs if r.points]
    if runs:
        # output tokens/s vs batch, one line per run and (input, output, concurrency); whiskers span the
        # per-window throughputs (min..max, never below zero)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in runs:
            groups: dict[tuple[int, int, int], list[PointResult]] = {}
            for p in r.points:
                groups.setdefault((p.workload.input_len, p.workload.output_len, p.workload.concurrency), []).append(p)
            for (i, o, cc), pts in groups.items():
                pts = sorted(pts, key=lambda p: p.workload.batch_size)
                ys = [p.output_token_throughput for p in pts]
                lo = [max(0.0, y - min(p.window_throughputs or [y])) for p, y in zip(pts, ys, strict=True)]
                hi = [max(0.0, max(p.window_throughputs or [y]) - y) for p, y in zip(pts, ys, strict=True)]
                ax.errorbar([p.workload.batch_size for p in pts], ys, yerr=[lo, hi], marker="o", capsize=3,
                            label=f"{r.label} in{i} out{o} c{cc}" + (" (NO sparse kernels)" if _noise_run(r, c) else ""))
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size")
        ax.set_ylabel("output tokens/s\n(whiskers: per-window min..max)")
        ax.set_title("Throughput vs batch size")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        save(fig, "tokens_per_s_vs_batch.png")

        # TTFT and ITL by workload
        keys = []
        for r in runs:
            for p in r.points:
                if p.workload.key not in keys:
                    keys.append(p.workload.key)
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(keys) + 4), 4.5))
        width = 0.8 / len(runs)
        for metric, ax, title in (("ttft_s", axes[0], "TTFT p50 (ms)"), ("itl_s", axes[1], "ITL p50 (ms)")):
            for j, r in enumerate(runs):
                by = {p.workload.key: getattr(p, metric) for p in r.points}
                xs = [k + j * width for k in range(len(keys))]
                ys = [by[k].p50 * 1e3 if k in by and not by[k].empty else 0.0 for k in keys]
                err = [[(by[k].p50 - by[k].min) * 1e3 if k in by and not by[k].empty else 0 for k in keys],
                       [(by[k].p90 - by[k].p50) * 1e3 if k in by and not by[k].empty else 0 for k in keys]]
                ax.bar(xs, ys, width, yerr=err, capsize=2, label=r.label)
            ax.set_xticks([k + width * (len(runs) - 1) / 2 for k in range(len(keys))])
            ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=7)
            ax.set_title(title + ", whiskers min..p90")
            ax.legend(fontsize=7)
        save(fig, "ttft_itl_by_workload.png")

        # memory bars
        fig, ax = plt.subplots(figsize=(7, 4.5))
        fields = [("weights", lambda p: p.memory.weights_bytes if p.memory else None),
                  ("torch peak", lambda p: p.memory.torch_peak_allocated_bytes if p.memory else None),
                  ("NVML process peak", lambda p: p.memory.nvml_process_used_peak_bytes if p.memory else None),
                  ("host peak RSS", lambda p: p.memory.host_peak_rss_bytes if p.memory else None),
                  ("server", lambda p: p.server_memory.peak_bytes if p.server_memory else None)]
        width = 0.8 / len(fields)
        for j, (name, fn) in enumerate(fields):
            vals = []
            for r in runs:
                xs = [fn(p) for p in r.points if fn(p) is not None]
                vals.append(max(xs) / 2**30 if xs else 0.0)
            ax.bar([k + j * width for k in range(len(runs))], vals, width, label=name)
        ax.set_xticks([k + width * (len(fields) - 1) / 2 for k in range(len(runs))])
        ax.set_xticklabels([r.label for r in runs], fontsize=8)
        ax.set_ylabel("GiB\n(max over workload points; 0 = not measured)")
        ax.set_title("Memory")
        ax.legend(fontsize=7)
        save(fig, "memory.png")

    if c.comparisons:
        # ratio with its 95% CI per point. A comparison whose sparse side ran no sparse kernels is drawn
        # in grey as noise (hollow markers, no bars), never as a gain.
        n_pts = max(len(cm.points) for cm, _, _ in c.comparisons)
        fig, ax = plt.subplots(figsize=(max(7, 1.0 * n_pts + 4), 4.8))
        n = len(c.comparisons)
        width = 0.8 / n
        any_noise = False
        for j, (cmp, _d, _s) in enumerate(c.comparisons):
            rs = [p.output_throughput_ratio for p in cmp.points]
            xs = [k + j * width for k in range(len(cmp.points))]
            ys = [r.estimate if not r.empty else math.nan for r in rs]
            lo = [max(0.0, r.estimate - r.ci_low) if r.has_interval else 0.0 for r in rs]
            hi = [max(0.0, r.ci_high - r.estimate) if r.has_interval else 0.0 for r in rs]
            if cmp.kind == "noise":
                any_noise = True
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", mfc="none", color="0.55", capsize=3,
                            label=f"{cmp.sparse_label} / {cmp.dense_label}: noise (no sparse kernels ran)")
            else:
                tag = "" if cmp.kind == "sparse" else " (sparse kernels unverified)"
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="s", capsize=3, label=f"{cmp.sparse_label} / {cmp.dense_label}{tag}")
            ax.set_xticks([k + width * (n - 1) / 2 for k in range(n_pts)])
            ax.set_xticklabels([p.workload.key for p in cmp.points], rotation=30, ha="right", fontsize=7)
        ax.axhline(1.0, color="k", lw=1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("output tokens/s, sparse / dense\n(geometric mean, 95% CI)")
        ax.set_title("Dense vs sparse: no sparse kernels ran, differences are noise, not speedup" if any_noise and
                     all(cm.kind == "noise" for cm, _, _ in c.comparisons) else "Dense vs sparse throughput ratio")
        ax.legend(fontsize=7)
        save(fig, "speedup.png")

    gem = [(g, r) for g in c.gemm for r in g.rows if r.status == "ok" and r.speedup is not None]
    if gem:
        fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(gem) + 3), 4.5))
        labels = [f"{r.engine} {r.shape[0]}x{r.shape[1]} t{r.tokens} {r.dtype}" for _, r in gem]
        ax.bar(range(len(gem)), [r.speedup for _, r in gem])
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(range(len(gem)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("GEMM speedup, dense p50 / 2:4 p50")
        ax.set_title("GEMM probe")
        save(fig, "gemm_speedup.png")
    return paths


def build_report(paths: list[Path], out_dir: Path, *, gpu_hour_usd: float, max_ppl_increase: float = 0.05,
                 plots: bool = True) -> ReportOutcome:
    if gpu_hour_usd <= 0 or not math.isfinite(gpu_hour_usd):
        raise ResultsError(f"--gpu-hour-usd {gpu_hour_usd} must be a positive price", fix="e.g. --gpu-hour-usd 2.5")
    files = load_results(paths)
    c = _collect(files)
    verdicts = [verdict(cmp, d, s, max_ppl_increase) for cmp, d, s in c.comparisons]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = _plots(c, out_dir) if plots else []
    md = render_markdown(c, gpu_hour_usd, verdicts, pngs, max_ppl_increase)
    mdp = out_dir / "report.md"
    atomic_write_text(mdp, md)
    return ReportOutcome(mdp, pngs, verdicts)
