"""``sparse-trt build``: TensorRT-LLM engines with weight sparsity (or the dense baseline) + build_report.json."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import console, handle_errors, setup_logging


def register(app: typer.Typer) -> None:
    @app.command("build")
    @handle_errors
    def build_cmd(
        source: Path = typer.Argument(..., help="TensorRT-LLM checkpoint (from `sparse-trt export trtllm`) or a pruned HF folder (exported first)."),
        out_dir: Path = typer.Option(..., "-o", "--out", help="Engine folder to write, e.g. engines/NAME (atomically)."),
        dense: bool = typer.Option(False, "--dense", help="Build the dense baseline: same settings, weight sparsity off."),
        max_batch_size: int = typer.Option(8, "--max-batch-size", help="Largest batch the engine serves."),
        max_input_len: int = typer.Option(2048, "--max-input-len", help="Longest prompt in tokens."),
        max_seq_len: int = typer.Option(4096, "--max-seq-len", help="Longest prompt + output in tokens."),
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
        from sparse_trt.build.trtllm import BuildRequest, build_engine, run_command_hint
        from sparse_trt.export.trtllm import parse_export_dtype

        setup_logging(verbose)
        req = BuildRequest(
            source=source, out=out_dir, dense=dense, max_batch_size=max_batch_size, max_input_len=max_input_len,
            max_seq_len=max_seq_len, workers=workers, log_path=log, overwrite=overwrite,
            dtype=parse_export_dtype(dtype), tp=tp, pp=pp,
        )
        with console.status("building") as status:
            report = build_engine(
                req,
                on_stage=lambda s: status.update(s),
                on_line=(lambda line: console.print(line, markup=False, highlight=False)) if show_log else None,
            )
        sp = report["sparsity"]
        t = Table(title=f"{report['engine_dir']} ({report['mode']})")
        t.add_column("item")
        t.add_column("value", justify="right")
        t.add_row("build time", f"{report['build_seconds']:.1f} s")
        t.add_row("engine size", f"{report['engine_bytes'] / 2**20:.1f} MiB in {len(report['engine_files'])} file(s)")
        t.add_row("layers eligible for sparse math", str(sp["eligible_count"]))
        t.add_row("layers with sparse kernels", str(sp["picked_count"]))
        t.add_row("linears with sparse kernels", str(len(sp["picked_linears"])))
        t.add_row("TensorRT-LLM / TensorRT", f"{report['versions']['tensorrt_llm']} / {report['versions']['tensorrt']}")
        console.print(t)
        if report["mode"] == "sparse":
            if sp["picked_count"] == 0:
                console.print("[bold red]no layer got a sparse kernel[/] - the engine runs dense GEMMs. Likely causes:")
                for cause in report["diagnosis"]:
                    console.print(f"[red]  - {cause}[/]", highlight=False)
            else:
                console.print(f"[green]sparse kernels picked for {sp['picked_count']} of {sp['eligible_count']} eligible layers[/]")
        world = report["checkpoint"]["world_size"]
        console.print(f"report: {report['engine_dir']}/build_report.json; full log: {report['log']}")
        console.print(f"run it: {run_command_hint(Path(report['engine_dir']), world)}", highlight=False)
