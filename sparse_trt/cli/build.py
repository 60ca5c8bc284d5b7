"""``sparse-trt build``: TensorRT-LLM engines with weight sparsity (or the dense baseline) + build_report.json."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, handle_errors, setup_logging

app = typer.Typer()


@app.command("build")
@handle_errors
def build_cmd(
    source: Path = typer.Argument(..., help="TensorRT-LLM checkpoint (from `sparse-trt export trtllm`) or a pruned HF folder (exported first)."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Engine folder to write, e.g. engines/NAME (atomically)."),
    dense: bool = typer.Option(False, "--dense", help="Build the dense baseline: same settings, weight sparsity off."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Largest batch the engine serves."),
    max_input_len: int = typer.Option(2048, "--max-input-len", help="Longest prompt in tokens."),
    max_seq_len: int = typer.Option(4096, "--max-seq-len", help="Longest prompt + output in tokens."),
    max_num_tokens: int | None = typer.Option(
        None, "--max-num-tokens", help="Most tokens in one forward pass (all sequences, padding removed); "
        "default: trtllm-build's (8192, capped at max-batch-size x max-seq-len)."),
    opt_num_tokens: int | None = typer.Option(
        None, "--opt-num-tokens", help="Token count TensorRT tunes tactics for with ONE optimization profile "
        "(needs --no-multiple-profiles); default there: max-batch-size x beam width, i.e. decode-sized GEMMs."),
    multiple_profiles: bool = typer.Option(
        True, "--multiple-profiles/--no-multiple-profiles",
        help="Several optimization profiles (up to 64, 128, 256, 512, 1024 and max-num-tokens tokens) so TensorRT "
        "times sparse vs dense tactics at prefill sizes too. On for dense and sparse builds alike."),
    trtllm_args: list[str] = typer.Option(
        [], "--trtllm-arg", help="Another trtllm-build flag, passed through as is, e.g. "
        "--trtllm-arg=--use_fused_mlp=disable (repeatable; flags sparse_trt sets itself are refused)."),
    workers: int = typer.Option(1, "--workers", help="Ranks built in parallel (one GPU each)."),
    log: Path | None = typer.Option(None, "--log", help="Where to keep the full build log (default: OUT.build.log beside OUT)."),
    dtype: str = typer.Option("float16", "--dtype", help="Export dtype when SOURCE is an HF folder: float16, bfloat16, float32."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size when SOURCE is an HF folder (a checkpoint keeps its own)."),
    pp: int = typer.Option(1, "--pp", help="Pipeline-parallel size when SOURCE is an HF folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only once the new build is complete)."),
    show_log: bool = typer.Option(False, "--show-log", help="Stream the builder's output to the console."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Build TensorRT-LLM 1.2 engines with weight sparsity and the GEMM plugin off; report which layers got sparse kernels."""
    from sparse_trt.engine.trtllm import BuildRequest, build_engine, parse_passthrough, run_command_hint
    from sparse_trt.export.trtllm import parse_export_dtype

    setup_logging(verbose)
    req = BuildRequest(
        source=source, out=out_dir, dense=dense, max_batch_size=max_batch_size, max_input_len=max_input_len,
        max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, opt_num_tokens=opt_num_tokens,
        multiple_profiles=multiple_profiles, extra_args=parse_passthrough(trtllm_args), workers=workers,
        log_path=log, overwrite=overwrite, dtype=parse_export_dtype(dtype), tp=tp, pp=pp,
    )
    with console.status("building") as status:
        report = build_engine(
            req,
            on_stage=lambda s: status.update(s),
            on_line=(lambda line: console.print(line, markup=False, highlight=False)) if show_log else None,
        )
    sp, eng = report.sparsity, report.engine
    t = Table(title=escape(f"{report.engine_dir} ({report.mode})"))
    t.add_column("item")
    t.add_column("value", justify="right")
    t.add_row("build time", f"{report.build_seconds:.1f} s")
    t.add_row("engine size", f"{report.engine_bytes / 2**20:.1f} MiB in {len(report.engine_files)} file(s)")
    t.add_row("precision", escape(report.checkpoint.precision))
    t.add_row("TensorRT layers: eligible / sparse", f"{sp.eligible_count} / {sp.picked_count}")
    t.add_row("GEMMs (linears): eligible / sparse", f"{sp.eligible_gemm_count} / {sp.picked_gemm_count}")
    frac = "unknown" if sp.sparse_weight_fraction is None else f"{sp.sparse_weight_fraction:.1%}"
    t.add_row("linear weights (= GEMM FLOPs) on sparse tactics", frac)
    t.add_row("unmapped TensorRT layers", f"{len(sp.unmapped_layers)} ({len(sp.foreign_nodes)} Myelin regions)")
    t.add_row("optimization profiles", "multiple" if eng.multiple_profiles else
              f"one, opt_num_tokens={eng.opt_num_tokens}" if eng.multiple_profiles is False else "not recorded")
    t.add_row("max_num_tokens / use_fused_mlp", f"{eng.max_num_tokens} / {eng.use_fused_mlp}")
    t.add_row("TensorRT-LLM / TensorRT", escape(f"{report.versions.tensorrt_llm} / {report.versions.tensorrt}"))
    console.print(t)
    if report.mode == "sparse":
        if sp.verdict == "sparse":
            console.print(f"[green]sparse: {frac} of the linear weights run on sparse tactics "
                          f"(above the {sp.threshold:.0%} threshold)[/]")
        else:
            head = {"dense": "no layer got a sparse kernel - the engine runs dense GEMMs",
                    "partly sparse": f"only {frac} of the linear weights got sparse kernels (threshold {sp.threshold:.0%})",
                    "unknown": "whether sparse kernels were picked is unknown"}[sp.verdict]
            console.print(f"[bold red]{escape(head)}[/]. Likely causes:")
            for cause in report.diagnosis:
                console.print(f"[red]  - {escape(cause)}[/]", highlight=False)
    world = report.checkpoint.world_size
    console.print(f"report: {report.engine_dir}/build_report.json; full log: {report.log}", markup=False, highlight=False)
    console.print(f"run it: {run_command_hint(Path(report.engine_dir), world)}", markup=False, highlight=False)
