"""``sparse-trt bench``: run / compare / gemm / synth. Results are written as JSON after every point."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from sparse_trt.bench.backends.base import BackendSpec, backend_names
from sparse_trt.bench.environment import capture
from sparse_trt.bench.gemm_probe import model_shapes, parse_shapes, run_gemm, winners
from sparse_trt.bench.results import Comparison, ResultsFile, RunResult
from sparse_trt.bench.runner import compare_benchmark, open_backend, run_benchmark
from sparse_trt.bench.synth import PRESETS, synth_pair
from sparse_trt.bench.workload import Workload, grid, parse_int_list
from sparse_trt.core.errors import InputError, OutputExistsError

from .common import console, handle_errors, out, parse_kv, progress_bar, setup_logging
from .options import resolve_device, resolve_dtype

bench_app = typer.Typer(
    help="Benchmark dense vs sparse: latency (TTFT, TPOT, e2e), tokens/s, memory; GEMM probes.",
    no_args_is_help=True,
)

BACKENDS_HELP = f"Backend: {', '.join(backend_names())}."


def _points(batch_sizes: str, input_lens: str, output_lens: str, concurrency: str) -> list[Workload]:
    return grid(parse_int_list(batch_sizes, "--batch-sizes"), parse_int_list(input_lens, "--input-lens"),
                parse_int_list(output_lens, "--output-lens"), parse_int_list(concurrency, "--concurrency"))


def _check_out(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"results file '{path}' already exists", fix="choose another path or pass --overwrite")
    if path.exists() and path.is_dir():
        raise OutputExistsError(f"results path '{path}' is a folder", fix="give a file name such as results.json")


def _check_counts(warmup: int, iters: int) -> None:
    if warmup < 0:
        raise InputError(f"--warmup {warmup} must be 0 or more")
    if iters < 1:
        raise InputError(f"--iters {iters} must be at least 1")


def _kernel_warning(run: RunResult, sparse_side: bool) -> None:
    k = run.sparse_kernels
    if k.active is False and (sparse_side or run.pattern):
        console.print(f"[bold red on white] NO SPARSE KERNELS RAN [/] for '{run.label}' ({run.backend}): {k.kind}. "
                      "Its timings are dense kernels on zeros; no speedup can come from sparsity.", highlight=False)
    elif k.active is None and (sparse_side or run.pattern):
        console.print(f"[bold yellow]SPARSE KERNELS NOT VERIFIED[/] for '{run.label}' ({run.backend}): {k.kind}", highlight=False)


def _run_table(run: RunResult) -> Table:
    t = Table(title=f"{run.label} ({run.backend}, {run.device}) — {run.status}")
    for c in ("workload", "TTFT p50 ms", "TPOT p50 ms", "e2e p50/p99 ms", "out tok/s", "req/s"):
        t.add_column(c, justify="right")
    for p in run.points:
        t.add_row(p.workload.key, f"{p.ttft_s.p50 * 1e3:.2f}", f"{p.tpot_s.p50 * 1e3:.2f}",
                  f"{p.e2e_s.p50 * 1e3:.1f} / {p.e2e_s.p99 * 1e3:.1f}",
                  f"{p.output_tokens_per_s.mean:.1f} ± {p.output_tokens_per_s.std:.1f}", f"{p.requests_per_s.mean:.2f}")
    return t


def _compare_table(cmp: Comparison) -> Table:
    t = Table(title=f"{cmp.sparse_label} vs {cmp.dense_label}: paired ratios (p50 [min..max]), >1 favours sparse")
    for c in ("workload", "out tok/s ratio", "e2e speedup", "TTFT speedup", "TPOT speedup"):
        t.add_column(c, justify="right")

    def f(s) -> str:
        return "–" if s.empty else f"{s.p50:.3f} [{s.min:.3f}..{s.max:.3f}]"

    for p in cmp.points:
        t.add_row(p.workload.key, f(p.output_tokens_per_s_ratio), f(p.e2e_speedup), f(p.ttft_speedup), f(p.tpot_speedup))
    return t


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("run")
@handle_errors
def run_cmd(
    model: str = typer.Argument(..., help="Model folder / hub id (hf, torch-2of4), engine folder (trtllm), Triton model name (triton)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Results JSON (rewritten after every finished point)."),
    backend: str = typer.Option("hf", "--backend", "-b", help=BACKENDS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16, bfloat16."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Comma-separated batch sizes (sequences per request)."),
    input_lens: str = typer.Option("128", "--input-lens", help="Comma-separated prompt lengths (tokens)."),
    output_lens: str = typer.Option("128", "--output-lens", help="Comma-separated generated lengths (exact; EOS ignored)."),
    concurrency: str = typer.Option("1", "--concurrency", help="Comma-separated numbers of requests in flight."),
    warmup: int = typer.Option(2, "--warmup", help="Unmeasured iterations per point."),
    iters: int = typer.Option(10, "--iters", help="Measured iterations per point."),
    label: str | None = typer.Option(None, "--label", help="Name of this run in results and reports."),
    opt: list[str] = typer.Option([], "--opt", help="Backend option KEY=VALUE (repeatable); see docs/bench.md."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random prompts."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing results file."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Measure one backend over a workload grid: TTFT, TPOT, e2e p50/p90/p99, tokens/s, req/s, memory."""
    setup_logging(verbose)
    _check_out(out_path, overwrite)
    _check_counts(warmup, iters)
    points = _points(batch_sizes, input_lens, output_lens, concurrency)
    dev = resolve_device(device)
    spec = BackendSpec(model, dev, resolve_dtype(dtype), parse_kv(opt, "--opt"), trust_remote_code)
    env = capture(dev)
    b = open_backend(backend, spec, points)
    try:
        name = label or f"{backend}:{Path(model).name or model}"

        def write(run: RunResult) -> None:
            ResultsFile("run", env, runs=[run]).save(out_path)

        with progress_bar(f"bench {name}", total=len(points) * (warmup + iters)) as (prog, task):
            run = run_benchmark(b, points, warmup=warmup, iters=iters, label=name, seed=seed, on_update=write,
                                progress=lambda d, i, n: prog.update(task, description=d, completed=i, total=n))
    finally:
        b.close()
    out.print(_run_table(run))
    _kernel_warning(run, sparse_side=False)
    console.print(f"wrote {out_path}")


@bench_app.command("compare")
@handle_errors
def compare_cmd(
    dense: str = typer.Argument(..., help="Dense model (or engine / Triton model, per backend)."),
    sparse: str = typer.Argument(..., help="Sparse model (or engine / Triton model, per backend)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Results JSON (rewritten after every finished point)."),
    backend: str = typer.Option("hf", "--backend", "-b", help=f"{BACKENDS_HELP} Used for both sides unless overridden."),
    dense_backend: str | None = typer.Option(None, "--dense-backend", help="Backend of the dense side (default --backend)."),
    sparse_backend: str | None = typer.Option(None, "--sparse-backend", help="Backend of the sparse side (default --backend)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16, bfloat16."),
    batch_sizes: str = typer.Option("1", "--batch-sizes"),
    input_lens: str = typer.Option("128", "--input-lens"),
    output_lens: str = typer.Option("128", "--output-lens"),
    concurrency: str = typer.Option("1", "--concurrency"),
    warmup: int = typer.Option(2, "--warmup"),
    iters: int = typer.Option(10, "--iters", help="Measured iteration pairs per point (order alternates)."),
    dense_label: str = typer.Option("dense", "--dense-label"),
    sparse_label: str = typer.Option("sparse", "--sparse-label"),
    opt: list[str] = typer.Option([], "--opt", help="Option for both backends KEY=VALUE (repeatable)."),
    dense_opt: list[str] = typer.Option([], "--dense-opt", help="Option for the dense backend only."),
    sparse_opt: list[str] = typer.Option([], "--sparse-opt", help="Option for the sparse backend only."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Dense vs sparse in one process, alternating on identical prompts; reports paired ratios with spread."""
    setup_logging(verbose)
    _check_out(out_path, overwrite)
    _check_counts(warmup, iters)
    if dense_label == sparse_label:
        raise InputError("--dense-label and --sparse-label must differ")
    points = _points(batch_sizes, input_lens, output_lens, concurrency)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    common = parse_kv(opt, "--opt")
    d_spec = BackendSpec(dense, dev, dt, {**common, **parse_kv(dense_opt, "--dense-opt")}, trust_remote_code)
    s_spec = BackendSpec(sparse, dev, dt, {**common, **parse_kv(sparse_opt, "--sparse-opt")}, trust_remote_code)
    env = capture(dev)
    db = open_backend(dense_backend or backend, d_spec, points)
    try:
        sb = open_backend(sparse_backend or backend, s_spec, points)
        try:
            def write(rd: RunResult, rs: RunResult, cmp: Comparison) -> None:
                ResultsFile("compare", env, runs=[rd, rs], comparisons=[cmp]).save(out_path)

            with progress_bar("compare", total=len(points) * (warmup + iters)) as (prog, task):
                rd, rs, cmp = compare_benchmark(
                    db, sb, points, warmup=warmup, iters=iters, labels=(dense_label, sparse_label), seed=seed,
                    on_update=write, progress=lambda d, i, n: prog.update(task, description=d, completed=i, total=n))
        finally:
            sb.close()
    finally:
        db.close()
    out.print(_run_table(rd))
    out.print(_run_table(rs))
    out.print(_compare_table(cmp))
    _kernel_warning(rs, sparse_side=True)
    console.print(f"wrote {out_path}")


@bench_app.command("gemm")
@handle_errors
def gemm_cmd(
    model: str | None = typer.Argument(None, help="Model whose distinct linear shapes to probe (or use --shapes)."),
    out_path: Path = typer.Option(..., "-o", "--out", help="Results JSON."),
    shapes: str | None = typer.Option(None, "--shapes", help="Explicit OUTxIN weight shapes, e.g. 4096x4096,11008x4096."),
    tokens: str = typer.Option("1,16,256,2048", "--tokens", help="Comma-separated token counts (rows of the input)."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 or bfloat16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    warmup: int = typer.Option(10, "--warmup"),
    iters: int = typer.Option(50, "--iters"),
    kernel: str = typer.Option("auto", "--kernel", help="torch 2:4 kernel: auto, cusparselt, cutlass."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Check one-layer ONNX graphs with real 2:4 weights (CPU, ONNX Runtime)."),
    onnx_max_elements: int = typer.Option(4096 * 14336, "--onnx-max-elements", help="Skip ONNX checks of bigger weights."),
    tensorrt: bool = typer.Option(True, "--tensorrt/--no-tensorrt", help="Also time TensorRT engines (when installed, on CUDA)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Dense vs 2:4 matmul for every distinct linear shape; says which shapes win. CPU: 'not available' rows."""
    setup_logging(verbose)
    _check_out(out_path, overwrite)
    _check_counts(warmup, iters)
    if (model is None) == (shapes is None):
        raise InputError("give either a MODEL or --shapes (not both, not neither)", fix="e.g. --shapes 4096x4096,11008x4096")
    dt = resolve_dtype(dtype)
    if dt not in (torch.float16, torch.bfloat16):
        raise InputError(f"--dtype {dtype}: 2:4 GEMM probes run float16 or bfloat16", fix="use --dtype float16 or bfloat16")
    shape_list = parse_shapes(shapes) if shapes is not None else model_shapes(model, trust_remote_code)
    token_list = parse_int_list(tokens, "--tokens")
    dev = resolve_device(device)
    env = capture(dev)
    with progress_bar("gemm shapes") as (prog, task):
        res = run_gemm(shape_list, token_list, dt, dev, source=model or "--shapes", warmup=warmup, iters=iters,
                       kernel=kernel, onnx=onnx, onnx_max_elements=onnx_max_elements, tensorrt=tensorrt,
                       progress=lambda i, n: prog.update(task, completed=i, total=n))
    ResultsFile("gemm", env, gemm=res).save(out_path)
    t = Table(title=f"GEMM dense vs 2:4 ({dtype}, {dev})")
    for c in ("shape out×in", "tokens", "engine", "dense p50 µs", "2:4 p50 µs", "speedup", "verdict / status"):
        t.add_column(c)
    verdicts = {id(r): v for r, v in winners(res)}
    for r in res.rows:
        if r.status == "ok":
            t.add_row(f"{r.shape[0]}×{r.shape[1]}", str(r.tokens), r.engine, f"{r.dense_s.p50 * 1e6:.1f}",
                      f"{r.sparse_s.p50 * 1e6:.1f}", f"{r.speedup:.3f}", verdicts.get(id(r), "–"))
        else:
            t.add_row(f"{r.shape[0]}×{r.shape[1]}", str(r.tokens), r.engine, "–", "–", "–", f"[yellow]{r.status}[/]")
    out.print(t)
    for c in res.onnx_checks:
        state = "[green]passed[/]" if c.passed else "[bold red]FAILED[/]"
        console.print(f"ONNX {c.shape[0]}×{c.shape[1]} {c.dtype}: checker {c.checker}, ORT max|err| "
                      f"{c.onnxruntime_max_abs_err:.3g} (tol {c.tolerance:.3g}), zeros {c.sparse_fraction:.2f}: {state}")
    for n in res.notes:
        console.print(f"note: {n}")
    won = [r for r, v in winners(res) if v == "sparse wins"]
    timed = [r for r in res.rows if r.status == "ok"]
    console.print(f"sparse wins {len(won)}/{len(timed)} timed rows" if timed else
                  "[bold yellow]no GEMM was timed on this device[/]: see the 'not available' rows")
    console.print(f"wrote {out_path}")
    if any(not c.passed for c in res.onnx_checks):
        raise typer.Exit(9)


@bench_app.command("synth")
@handle_errors
def synth_cmd(
    out_dir: Path = typer.Argument(..., help="Folder for OUT/dense and OUT/sparse-2of4."),
    config: str = typer.Option("llama-7b", "--config", help=f"Preset ({', '.join(PRESETS)}) or a config.json path."),
    layers: int | None = typer.Option(None, "--layers", help="Override num_hidden_layers (keep it small)."),
    dtype: str = typer.Option("float16", "--dtype", help="float32, float16 or bfloat16."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a random-weight model from a config, save it dense and 2:4 (magnitude mask + sparsity.json)."""
    setup_logging(verbose)
    dt = resolve_dtype(dtype)
    if dt is None:
        raise InputError("--dtype auto has no meaning for a model built from a config", fix="use float16, bfloat16 or float32")
    pair = synth_pair(config, out_dir, dtype=dt, seed=seed, num_layers=layers, overwrite=overwrite)
    console.print(f"built {pair.params / 1e9:.2f}B parameters, {pair.layers} layers: {pair.dense_dir} and {pair.sparse_dir}")


def demo_bench_step(dense: str, pruned: Path, out_dir: Path, device: torch.device) -> Path:
    """The demo's benchmark step: a small dense-vs-pruned compare on the hf backend, then a report.

    Returns the report folder. On the hf backend no sparse kernels run, and the report says so loudly:
    that is the point of showing it (zeros alone buy nothing).
    """
    from sparse_trt.bench.report import build_report

    bench_dir = out_dir / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    res_path = bench_dir / "compare.json"
    points = grid([1, 4], [32], [12], [1])
    env = capture(device, ["sparse-trt", "demo", "(bench step)"])
    db = open_backend("hf", BackendSpec(dense, device), points)
    try:
        sb = open_backend("hf", BackendSpec(str(pruned), device), points)
        try:
            def write(rd: RunResult, rs: RunResult, cmp: Comparison) -> None:
                ResultsFile("compare", env, runs=[rd, rs], comparisons=[cmp]).save(res_path)

            with progress_bar("dense vs pruned (hf)", total=len(points) * 4) as (prog, task):
                rd, rs, cmp = compare_benchmark(
                    db, sb, points, warmup=1, iters=3, labels=("dense", "pruned"), on_update=write,
                    progress=lambda d, i, n: prog.update(task, description=d, completed=i, total=n))
        finally:
            sb.close()
    finally:
        db.close()
    out.print(_compare_table(cmp))
    _kernel_warning(rs, sparse_side=True)
    rep = build_report([res_path], bench_dir / "report", gpu_hour_usd=2.5)
    for v in rep.verdicts:
        console.print(f"[bold]verdict[/]: {v.answer}", highlight=False)
    console.print(f"wrote {res_path} and {rep.markdown}")
    return bench_dir / "report"
