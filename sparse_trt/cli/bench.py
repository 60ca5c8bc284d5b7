"""``sparse-trt bench``: run / compare / gemm / synth. Results are written as JSON after every point.

Thin: options are parsed here into typed values, the work is done by ``sparse_trt.bench.session`` (and
``gemm_probe`` / ``synth``), and the outcome is rendered. Heavy modules are imported inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from sparse_trt.core.atomic import check_output_file
from sparse_trt.core.errors import InputError

from .common import console, handle_errors, out, parse_kv, progress_bar, setup_logging

if TYPE_CHECKING:
    import torch

    from sparse_trt.bench.loadgen import LoadSpec
    from sparse_trt.bench.results import Comparison, RunResult
    from sparse_trt.bench.workload import Workload

app = typer.Typer(
    name="bench",
    help="Benchmark dense vs sparse with one closed-loop load generator: TTFT, ITL, e2e latency, "
         "tokens/s, memory; GEMM probes.",
    no_args_is_help=True,
)

BACKENDS_HELP = "Backend: hf, torch-2of4, trtllm, triton (or a registered one)."
H_DEVICE = "auto, cpu, cuda, cuda:N."
H_DTYPE = "auto (the checkpoint's or engine's), float32, float16, bfloat16."
H_BATCH = "Comma-separated batch sizes: sequences per request."
H_INPUT = "Comma-separated prompt lengths in tokens (random token ids, identical for dense and sparse)."
H_OUTPUT = "Comma-separated generated lengths in tokens (exact: end-of-sequence is ignored)."
H_CONC = "Comma-separated concurrency levels: closed-loop workers, each sending its next request when its previous one ends."
H_RATE = "Poisson arrivals at this many requests/s (at most --concurrency in flight) instead of a closed loop."
H_REQUESTS = "Measured requests per window (default: 10 per worker for run, 2 per worker for compare)."
H_DURATION = "Measure for this many seconds instead of a request count (requests in flight at the end finish and count)."
H_WARMUP = "Unmeasured warm-up requests per point and side (default: one per worker)."
H_OPT = "Backend option KEY=VALUE (repeatable); see docs/bench.md."
H_SEED = "Seed of the random prompts (and of Poisson arrivals)."
H_OVERWRITE = "Replace an existing results file."
H_TRC = "Allow models that ship custom code (refused otherwise)."
H_VERBOSE = "Log details (library warnings, backend messages)."
H_CLIENT_MEM = "Also measure this process's memory when the backend is a client of a server (labelled client)."


def _points(batch_sizes: str, input_lens: str, output_lens: str, concurrency: str) -> list[Workload]:
    from sparse_trt.bench.workload import grid, parse_int_list

    return grid(parse_int_list(batch_sizes, "--batch-sizes"), parse_int_list(input_lens, "--input-lens"),
                parse_int_list(output_lens, "--output-lens"), parse_int_list(concurrency, "--concurrency"))


def _load(requests: int | None, duration: float | None, warmup: int | None, rate: float | None, seed: int,
          per_worker: int) -> LoadSpec:
    from sparse_trt.bench.loadgen import LoadSpec

    return LoadSpec(concurrency=1, requests=requests, duration_s=duration, warmup=warmup, request_rate=rate,
                    seed=seed, per_worker=per_worker)


def _check_out(path: Path, overwrite: bool) -> None:
    check_output_file(path, overwrite, "results file")  # --overwrite replaces only a results file of ours


def _kernel_warning(run: RunResult, sparse_side: bool) -> None:
    k = run.sparse_kernels
    if k.active is False and (sparse_side or run.pattern):
        console.print(Text.assemble((" NO SPARSE KERNELS RAN ", "bold red on white"),
                                    f" for '{run.label}' ({run.backend}): {k.kind}. Its timings are dense kernels on "
                                    "zeros; no speedup can come from sparsity."))
    elif k.active is None and (sparse_side or run.pattern):
        console.print(Text.assemble(("SPARSE KERNELS NOT VERIFIED", "bold yellow"), f" for '{run.label}' ({run.backend}): {k.kind}"))


def run_table(run: RunResult) -> Table:
    from sparse_trt.bench.conditions import describe
    from sparse_trt.bench.report import human_number, human_seconds

    t = Table(title=Text(f"{run.label} ({run.backend}, {run.device}) — {run.status}"))
    t.add_column("workload", no_wrap=True)
    for c in ("TTFT p50", "ITL p50", "e2e p50", "e2e p99", "out tok/s", "tok/s/user", "req/s"):
        t.add_column(c, justify="right")
    for p in run.points:
        t.add_row(p.workload.key, human_seconds(p.ttft_s.p50), human_seconds(p.itl_s.p50),
                  human_seconds(p.e2e_s.p50), human_seconds(p.e2e_s.p99), human_number(p.output_token_throughput),
                  human_number(p.output_tokens_per_s_per_user.p50), human_number(p.request_throughput))
    lines = [f"{p.workload.key}: {p.requests} requests in {human_seconds(p.window_s)}; {describe(p.conditions)}"
             for p in run.points]
    if run.token_counts:
        lines.append(f"token counts: {run.token_counts}")
    t.caption = Text("\n".join(lines), justify="left")
    return t


def compare_table(cmp: Comparison) -> Table:
    """The paired ratios in words; headed as noise when the sparse side ran no sparse kernels."""
    from sparse_trt.bench.report import NOISE_HEADING, ratio_words

    if cmp.kind == "noise":
        title = f"{cmp.sparse_label} vs {cmp.dense_label}: {NOISE_HEADING}"
    else:
        title = (f"{cmp.sparse_label} vs {cmp.dense_label}: paired ratios (geometric mean [95% CI] over pairs of "
                 "windows), >1 favours sparse" + ("; sparse kernels unverified" if cmp.kind == "unverified" else ""))
    t = Table(title=Text(title))  # Text: brackets in titles and cells are not Rich markup
    t.add_column("workload", no_wrap=True)
    for c in ("output tok/s", "e2e latency", "TTFT", "ITL"):
        t.add_column(c, justify="right")
    for p in cmp.points:
        t.add_row(p.workload.key, *(Text(ratio_words(r, cmp.kind)) for r in
                                    (p.output_throughput_ratio, p.e2e_speedup, p.ttft_speedup, p.itl_speedup)))
    return t


def _progress(prog, task):
    return lambda d, i, n: prog.update(task, description=d, completed=i, total=n)


@app.command("run")
@handle_errors
def run_cmd(
    model: str = typer.Argument(..., help="Model folder / hub id (hf, torch-2of4), engine folder (trtllm), Triton model name (triton)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Results JSON (rewritten after every finished point)."),
    backend: str = typer.Option("hf", "--backend", "-b", help=BACKENDS_HELP),
    device: str = typer.Option("auto", "--device", help=H_DEVICE),
    dtype: str = typer.Option("auto", "--dtype", help=H_DTYPE),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help=H_BATCH),
    input_lens: str = typer.Option("128", "--input-lens", help=H_INPUT),
    output_lens: str = typer.Option("128", "--output-lens", help=H_OUTPUT),
    concurrency: str = typer.Option("1", "--concurrency", help=H_CONC),
    request_rate: float | None = typer.Option(None, "--request-rate", help=H_RATE),
    requests: int | None = typer.Option(None, "--requests", help=H_REQUESTS),
    duration: float | None = typer.Option(None, "--duration", help=H_DURATION),
    warmup: int | None = typer.Option(None, "--warmup", help=H_WARMUP),
    label: str | None = typer.Option(None, "--label", help="Name of this run in results and reports."),
    opt: list[str] = typer.Option([], "--opt", help=H_OPT),
    seed: int = typer.Option(0, "--seed", help=H_SEED),
    client_memory: bool = typer.Option(False, "--client-memory", help=H_CLIENT_MEM),
    overwrite: bool = typer.Option(False, "--overwrite", help=H_OVERWRITE),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=H_TRC),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=H_VERBOSE),
) -> None:
    """Measure one backend over a workload grid: TTFT, ITL, inter-chunk, e2e (p50/p90/p99), tokens/s, req/s, memory."""
    setup_logging(verbose)
    from sparse_trt.bench.backends.base import BackendSpec
    from sparse_trt.bench.environment import capture
    from sparse_trt.bench.session import Side, run_to_file

    from .options import resolve_device, resolve_dtype

    _check_out(out_path, overwrite)
    load = _load(requests, duration, warmup, request_rate, seed, per_worker=10)
    points = _points(batch_sizes, input_lens, output_lens, concurrency)
    dev = resolve_device(device)
    spec = BackendSpec(model, dev, resolve_dtype(dtype), parse_kv(opt, "--opt"), trust_remote_code)
    name = label or f"{backend}:{Path(model).name or model}"
    env = capture(dev)
    with progress_bar(f"bench {name}") as (prog, task):
        run = run_to_file(Side(backend, spec, name), points, load, out_path, env, seed=seed,
                          client_memory=client_memory, progress=_progress(prog, task))
    out.print(run_table(run))
    _kernel_warning(run, sparse_side=False)
    console.print(f"wrote {out_path}", markup=False, highlight=False)


@app.command("compare")
@handle_errors
def compare_cmd(
    dense: str = typer.Argument(..., help="Dense model (or engine / Triton model, per backend)."),
    sparse: str = typer.Argument(..., help="Sparse model (or engine / Triton model, per backend)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Results JSON (rewritten after every finished point)."),
    backend: str = typer.Option("hf", "--backend", "-b", help=f"{BACKENDS_HELP} Used for both sides unless overridden."),
    dense_backend: str | None = typer.Option(None, "--dense-backend", help="Backend of the dense side (default --backend)."),
    sparse_backend: str | None = typer.Option(None, "--sparse-backend", help="Backend of the sparse side (default --backend)."),
    device: str = typer.Option("auto", "--device", help=H_DEVICE),
    dtype: str = typer.Option("auto", "--dtype", help=H_DTYPE),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help=H_BATCH),
    input_lens: str = typer.Option("128", "--input-lens", help=H_INPUT),
    output_lens: str = typer.Option("128", "--output-lens", help=H_OUTPUT),
    concurrency: str = typer.Option("1", "--concurrency", help=H_CONC),
    request_rate: float | None = typer.Option(None, "--request-rate", help=H_RATE),
    requests: int | None = typer.Option(None, "--requests", help=H_REQUESTS),
    duration: float | None = typer.Option(None, "--duration", help=H_DURATION),
    warmup: int | None = typer.Option(None, "--warmup", help=H_WARMUP),
    iters: int = typer.Option(5, "--iters", "--pairs",
                              help="Measured pairs of windows per point (dense and sparse back to back, order alternating); "
                                   "the confidence intervals resample these pairs."),
    dense_label: str = typer.Option("dense", "--dense-label", help="Name of the dense side in results and reports."),
    sparse_label: str = typer.Option("sparse", "--sparse-label", help="Name of the sparse side in results and reports."),
    opt: list[str] = typer.Option([], "--opt", help="Option for both backends KEY=VALUE (repeatable)."),
    dense_opt: list[str] = typer.Option([], "--dense-opt", help="Option for the dense backend only (KEY=VALUE, repeatable)."),
    sparse_opt: list[str] = typer.Option([], "--sparse-opt", help="Option for the sparse backend only (KEY=VALUE, repeatable)."),
    allow_different_models: bool = typer.Option(
        False, "--allow-different-models",
        help="Compare two models whose architecture or shapes differ (refused otherwise: the sparse model should be "
             "the dense one pruned)."),
    allow_mixed_precision: bool = typer.Option(
        False, "--allow-mixed-precision",
        help="Compare two sides of different precisions (e.g. an FP8 sparse engine vs a float16 dense one; refused "
             "otherwise, before anything runs). Recorded in the results JSON and flagged in the report as not like "
             "with like."),
    seed: int = typer.Option(0, "--seed", help=H_SEED),
    client_memory: bool = typer.Option(False, "--client-memory", help=H_CLIENT_MEM),
    overwrite: bool = typer.Option(False, "--overwrite", help=H_OVERWRITE),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=H_TRC),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=H_VERBOSE),
) -> None:
    """Dense vs sparse in one process, in alternating pairs of windows on identical prompts; ratios with 95% CIs.

    Both sides must compute in the same precision (FP8 sparse vs FP8 dense is the headline pair): the precision of
    each side is read from its engine's build_report.json / config.json, its folder's quantization.json, or its
    dtype before anything runs, and a mixed pair is refused unless --allow-mixed-precision.
    """
    setup_logging(verbose)
    from sparse_trt.bench.backends.base import BackendSpec
    from sparse_trt.bench.environment import capture
    from sparse_trt.bench.session import Side, compare_to_file

    from .options import resolve_device, resolve_dtype

    _check_out(out_path, overwrite)
    if iters < 1:
        raise InputError(f"--iters {iters} must be at least 1", fix="e.g. --iters 5 (2 or more give a confidence interval)")
    load = _load(requests, duration, warmup, request_rate, seed, per_worker=2)
    points = _points(batch_sizes, input_lens, output_lens, concurrency)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    common = parse_kv(opt, "--opt")
    d_spec = BackendSpec(dense, dev, dt, {**common, **parse_kv(dense_opt, "--dense-opt")}, trust_remote_code)
    s_spec = BackendSpec(sparse, dev, dt, {**common, **parse_kv(sparse_opt, "--sparse-opt")}, trust_remote_code)
    env = capture(dev)
    with progress_bar("compare") as (prog, task):
        res = compare_to_file(Side(dense_backend or backend, d_spec, dense_label),
                              Side(sparse_backend or backend, s_spec, sparse_label), points, load, out_path, env,
                              pairs=iters, seed=seed, allow_different_models=allow_different_models,
                              client_memory=client_memory, progress=_progress(prog, task),
                              allow_mixed_precision=allow_mixed_precision)
    for n in res.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
    out.print(run_table(res.dense))
    out.print(run_table(res.sparse))
    out.print(compare_table(res.comparison))
    if res.comparison.mixed_precision:
        console.print(Text.assemble(("NOT LIKE WITH LIKE", "bold red"), f": {res.comparison.mixed_precision}"))
    _kernel_warning(res.sparse, sparse_side=True)
    console.print(f"wrote {out_path}", markup=False, highlight=False)


@app.command("gemm")
@handle_errors
def gemm_cmd(
    model: str | None = typer.Argument(None, help="Model whose distinct linear shapes to probe (or use --shapes)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Results JSON."),
    shapes: str | None = typer.Option(None, "--shapes", help="Explicit OUTxIN weight shapes, e.g. 4096x4096,11008x4096."),
    tokens: str = typer.Option("1,16,256,2048", "--tokens", help="Comma-separated token counts (rows of the input)."),
    dtype: str = typer.Option(
        "float16", "--dtype",
        help="float16, bfloat16, or fp8 (float8_e4m3fn: dense torch._scaled_mm vs cuSPARSELt 2:4, per-tensor scales, "
             "bfloat16 out; needs sm89+ and cuSPARSELt 0.6.2+).",
    ),
    device: str = typer.Option("auto", "--device", help=H_DEVICE),
    warmup: int = typer.Option(10, "--warmup", help="Untimed calls per shape and token count before timing."),
    iters: int = typer.Option(50, "--iters", help="Timed calls per shape and token count (p50 reported)."),
    kernel: str = typer.Option("auto", "--kernel", help="torch 2:4 kernel: auto, cusparselt, cutlass."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Check one-layer ONNX graphs with real 2:4 weights (CPU, ONNX Runtime)."),
    onnx_max_elements: int = typer.Option(4096 * 14336, "--onnx-max-elements", help="Skip ONNX checks of bigger weights."),
    tensorrt: bool = typer.Option(True, "--tensorrt/--no-tensorrt", help="Also time TensorRT engines (when installed, on CUDA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=H_OVERWRITE),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=H_TRC),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=H_VERBOSE),
) -> None:
    """Dense vs 2:4 matmul for every distinct linear shape; says which shapes win. CPU: 'not available' rows."""
    setup_logging(verbose)
    from sparse_trt.bench.environment import capture
    from sparse_trt.bench.gemm_probe import model_shapes, parse_gemm_dtype, parse_shapes, run_gemm, winners
    from sparse_trt.bench.results import ResultsFile
    from sparse_trt.bench.workload import parse_int_list

    from .options import resolve_device

    _check_out(out_path, overwrite)
    if warmup < 0:
        raise InputError(f"--warmup {warmup} must be 0 or more")
    if iters < 1:
        raise InputError(f"--iters {iters} must be at least 1")
    if (model is None) == (shapes is None):
        raise InputError("give either a MODEL or --shapes (not both, not neither)", fix="e.g. --shapes 4096x4096,11008x4096")
    dt = parse_gemm_dtype(dtype)
    shape_list = parse_shapes(shapes) if shapes is not None else model_shapes(model, trust_remote_code)
    token_list = parse_int_list(tokens, "--tokens")
    dev = resolve_device(device)
    env = capture(dev)
    with progress_bar("gemm shapes") as (prog, task):
        res = run_gemm(shape_list, token_list, dt, dev, source=model or "--shapes", warmup=warmup, iters=iters,
                       kernel=kernel, onnx=onnx, onnx_max_elements=onnx_max_elements, tensorrt=tensorrt,
                       progress=lambda i, n: prog.update(task, completed=i, total=n))
    ResultsFile("gemm", env, gemm=res).save(out_path)
    t = Table(title=Text(f"GEMM dense vs 2:4 ({str(dt).removeprefix('torch.')}, {dev})"))
    for c in ("shape out×in", "tokens", "engine", "dense p50 µs", "2:4 p50 µs", "speedup", "verdict / status"):
        t.add_column(c)
    verdicts = {id(r): v for r, v in winners(res)}
    for r in res.rows:
        if r.status == "ok":
            t.add_row(f"{r.shape[0]}×{r.shape[1]}", str(r.tokens), r.engine, f"{r.dense_s.p50 * 1e6:.1f}",
                      f"{r.sparse_s.p50 * 1e6:.1f}", f"{r.speedup:.3f}", verdicts.get(id(r), "–"))
        else:
            t.add_row(f"{r.shape[0]}×{r.shape[1]}", str(r.tokens), r.engine, "–", "–", "–", Text(r.status, style="yellow"))
    out.print(t)
    for c in res.onnx_checks:
        state = ("passed", "green") if c.passed else ("FAILED", "bold red")
        console.print(Text.assemble(f"ONNX {c.shape[0]}×{c.shape[1]} {c.dtype}: checker {c.checker}, ORT max|err| "
                                    f"{c.onnxruntime_max_abs_err:.3g} (tol {c.tolerance:.3g}), zeros {c.sparse_fraction:.2f}: ",
                                    state))
    for n in res.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
    won = [r for r, v in winners(res) if v == "sparse wins"]
    timed = [r for r in res.rows if r.status == "ok"]
    console.print(f"sparse wins {len(won)}/{len(timed)} timed rows" if timed else
                  "[bold yellow]no GEMM was timed on this device[/]: see the 'not available' rows")
    console.print(f"wrote {out_path}", markup=False, highlight=False)
    failed = [c for c in res.onnx_checks if not c.passed]
    if failed:
        from sparse_trt.bench.errors import CorrectnessError

        raise CorrectnessError(f"{len(failed)} ONNX 2:4 GEMM check(s) failed (see above); results kept in {out_path}",
                               fix="do not trust 2:4 timings on this stack until the check passes")


@app.command("synth")
@handle_errors
def synth_cmd(
    out_dir: Path = typer.Argument(..., help="Folder for OUT/dense and OUT/sparse-2of4."),
    config: str = typer.Option("llama-7b", "--config", help="Preset (llama-7b, mistral-7b, ...) or a config.json path."),
    layers: int | None = typer.Option(None, "--layers", help="Override num_hidden_layers (keep it small)."),
    dtype: str = typer.Option("float16", "--dtype", help="float32, float16 or bfloat16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing OUT/dense and OUT/sparse-2of4."),
    streamed: bool = typer.Option(
        False, "--streamed",
        help="Write only the dense checkpoint, into OUT itself, one decoder layer at a time (HF shards + index), never "
             "holding the model: for pruning tests of models larger than memory (presets llama-0.5b, llama-1.5b, llama-3b).",
    ),
    tokenizer: str = typer.Option(
        "smollm2", "--tokenizer",
        help="With --streamed: tokenizer folder copied into OUT so it can be calibrated and evaluated "
             "('smollm2': the built-in one, whose 49152 ids fit the llama-*b presets; 'none': no tokenizer).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=H_VERBOSE),
) -> None:
    """Build a random-weight model from a config, save it dense and 2:4 (magnitude mask + sparsity.json).

    With --streamed: only the dense checkpoint, written layer by layer.
    """
    setup_logging(verbose)
    from sparse_trt.bench.synth import synth_pair, write_streamed_checkpoint

    from .options import resolve_dtype

    dt = resolve_dtype(dtype)
    if dt is None:
        raise InputError("--dtype auto has no meaning for a model built from a config", fix="use float16, bfloat16 or float32")
    if streamed:
        from sparse_trt.models.loading import builtin_dir

        tok = None if tokenizer == "none" else (builtin_dir("smollm2") if tokenizer == "smollm2" else Path(tokenizer))
        params = write_streamed_checkpoint(config, out_dir, dtype=dt, seed=seed, num_layers=layers,
                                           tokenizer_dir=tok, overwrite=overwrite)
        console.print(f"wrote {params / 1e9:.2f}B parameters layer by layer to {out_dir}"
                      + ("" if tok is not None else " (no tokenizer)"), markup=False, highlight=False)
        return
    pair = synth_pair(config, out_dir, dtype=dt, seed=seed, num_layers=layers, overwrite=overwrite)
    console.print(f"built {pair.params / 1e9:.2f}B parameters, {pair.layers} layers: {pair.dense_dir} and {pair.sparse_dir}",
                  markup=False, highlight=False)


def demo_bench_step(dense: str, pruned: Path, out_dir: Path, device: torch.device) -> Path:
    """The demo's benchmark step (``sparse_trt.bench.session.demo_compare``) with its output; returns the report folder.

    On the hf backend no sparse kernels run: the ratio table is headed as noise by construction and the
    verdict says no sparse kernels ran.
    """
    from sparse_trt.bench.session import demo_compare, demo_request_count

    with progress_bar("dense vs pruned (hf)", total=demo_request_count()) as (prog, task):
        res = demo_compare(dense, pruned, out_dir, device, progress=_progress(prog, task))
    out.print(compare_table(res.compare.comparison))
    _kernel_warning(res.compare.sparse, sparse_side=True)
    for v in res.verdicts:
        console.print(Text.assemble(("verdict", "bold"), f": {v.answer}"))
    console.print(f"wrote {res.results} and {res.report_dir / 'report.md'}", markup=False, highlight=False)
    return res.report_dir
