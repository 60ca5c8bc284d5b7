"""``sparse-trt export trtllm``: pruned HF folder -> TensorRT-LLM unified checkpoint (no TensorRT-LLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .common import console, handle_errors, out, setup_logging

app = typer.Typer(name="export", help="Export pruned models to deployment formats.", no_args_is_help=True)


@app.command("trtllm")
@handle_errors
def export_trtllm_cmd(
    model_dir: Path = typer.Argument(..., help="Output folder of `sparse-trt prune` (HF checkpoint + sparsity.json)."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Checkpoint folder to write (config.json + rank{r}.safetensors), atomically."),
    dtype: str = typer.Option("float16", "--dtype", help="Weight dtype: float16, bfloat16 or float32 (float32 gets no sparse kernels: Sparse Tensor Cores do not run FP32)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size (GPUs per pipeline stage)."),
    pp: int = typer.Option(1, "--pp", help="Pipeline-parallel size (stages)."),
    allow_dense: bool = typer.Option(False, "--allow-dense", help="Export a folder without sparsity.json (the dense baseline)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only once the new one is complete)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Write MODEL_DIR as a TensorRT-LLM 1.2 unified checkpoint, keeping and re-checking its N:M pattern in every shard."""
    from sparse_trt.export.trtllm import export_trtllm, parse_export_dtype

    setup_logging(verbose)
    export_dtype = parse_export_dtype(dtype)
    if str(export_dtype) == "torch.float32":
        console.print("[yellow]warning:[/] float32 weights: Sparse Tensor Cores do not run FP32, so an engine built from "
                      "this checkpoint gets no sparse kernels; export with --dtype float16 or bfloat16 for 2:4 speedups.",
                      highlight=False)
    res = export_trtllm(model_dir, out_dir, dtype=export_dtype, tp=tp, pp=pp, overwrite=overwrite,
                        allow_dense=allow_dense)
    if as_json:
        out.print_json(json.dumps({
            "out": str(res.out), "family": res.family, "architecture": res.architecture, "dtype": res.dtype,
            "tp": res.tp, "pp": res.pp, "pattern": res.pattern, "checked_weights": res.checked_weights,
            "ranks": [{"rank": r.rank, "file": r.file, "tensors": r.tensors, "bytes": r.bytes, "layers": list(r.layers)}
                      for r in res.ranks],
        }))
        return
    t = Table(title=f"{res.architecture} -> {res.out} ({res.dtype}, tp={res.tp}, pp={res.pp})")
    for col in ("rank", "file", "layers", "tensors", "MiB"):
        t.add_column(col, justify="right" if col in ("tensors", "MiB") else "left")
    for r in res.ranks:
        layers = f"{r.layers[0]}-{r.layers[-1]}" if r.layers else "-"
        t.add_row(str(r.rank), r.file, layers, str(r.tensors), f"{r.bytes / 2**20:.1f}")
    console.print(t)
    if res.pattern is None:
        console.print("[yellow]dense export[/] (no sparsity.json): this is a baseline checkpoint")
    else:
        console.print(f"[green]pattern {res.pattern} verified[/] in {res.checked_weights} sharded weights")
    console.print(f"wrote {res.out} (build it with `sparse-trt build {res.out} -o engines/NAME`)")

