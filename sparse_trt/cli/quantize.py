"""``sparse-trt quantize``: FP8 / INT8-SmoothQuant calibration of a (pruned) model folder, zeros kept."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, handle_errors, out, progress_bar, setup_logging

app = typer.Typer()


@app.command("quantize")
@handle_errors
def quantize_cmd(
    model: str = typer.Argument(..., help="Model folder (the output of `sparse-trt prune`, or a dense HF folder), .gguf file, or 'smollm2'."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Folder to write: the model's files unchanged + quantization.json, atomically."),
    fmt: str = typer.Option(..., "--format", help="fp8 (FP8 E4M3 weights and activations, per-tensor scales) or int8-sq (INT8 SmoothQuant: per-channel weights, per-tensor activations)."),
    kv_cache: str | None = typer.Option(None, "--kv-cache", help="Also quantize the KV cache: fp8 (with --format fp8) or int8 (with --format int8-sq)."),
    calib: str = typer.Option("wiki", "--calib", help="Calibration text: 'wiki' (built-in corpus, calibration part), FILE.txt, or FILE.jsonl with a 'text' field."),
    nsamples: int = typer.Option(128, "--nsamples", help="Number of calibration windows."),
    seqlen: int = typer.Option(512, "--seqlen", help="Tokens per calibration window."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing the calibration windows."),
    exclude: list[str] = typer.Option(
        [], "--exclude",
        help="Keep these linears unquantized, in the input dtype (repeatable): a glob over module names, full "
             "('model.layers.0.*') or inside a layer ('*mlp.down_proj'); a plain name also matches as a suffix "
             "('down_proj'). q/k/v and gate/up are fused GEMMs: exclude all of a group or none. lm_head is always "
             "excluded. Excluded GEMMs run in 16-bit."),
    alpha: float = typer.Option(1.0, "--alpha", help="int8-sq: SmoothQuant migration strength in [0, 1] (1.0 = NVIDIA ModelOpt's default; 0.5 = the paper's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (where the calibration forward runs)."),
    dtype: str = typer.Option("auto", "--dtype", help="Calibration dtype: auto (the checkpoint's), float32, float16, bfloat16. Weights are written unchanged."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only once the new one is complete)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow models that ship custom code."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Calibrate activation (and KV-cache) ranges and compute FP8 or INT8-SmoothQuant scales for TensorRT-LLM.

    The output folder keeps the input's weights as they are and adds quantization.json; `sparse-trt export
    trtllm` turns it into an FP8 / INT8 checkpoint and `sparse-trt eval` simulates the quantized engine.
    The N:M pattern is checked after every transform (smoothing, quantization). lm_head and the linears
    matched by --exclude stay unquantized (listed in quantization.json's exclude_modules).
    """
    from sparse_trt.data.text import parse_source
    from sparse_trt.quantize.api import QuantizeOptions, quantize_model
    from sparse_trt.quantize.formats import parse_format, parse_kv_format

    from .options import resolve_device, resolve_dtype

    setup_logging(verbose)
    f = parse_format(fmt)
    opts = QuantizeOptions(f, parse_kv_format(kv_cache, f), parse_source(calib), nsamples=nsamples, seqlen=seqlen,
                           seed=seed, alpha=alpha, exclude=tuple(exclude))
    with progress_bar("calibration windows") as (prog, task):
        res = quantize_model(
            model, out_dir, opts, device=resolve_device(device), dtype=resolve_dtype(dtype), overwrite=overwrite,
            trust_remote_code=trust_remote_code, progress=lambda i, n: prog.update(task, completed=i, total=n),
        )
    spec = res.spec
    if as_json:
        out.print_json(json.dumps({
            "out": str(res.out), "format": spec.format, "quant_algo": spec.quant_algo, "kv_cache": spec.kv_cache,
            "alpha": spec.alpha, "linears": len(spec.linears), "kv_layers": len(spec.kv),
            "exclude_modules": list(spec.exclude_modules),
            "checked_weights": res.checked_weights, "calib_tokens": res.calib_tokens, "seconds": round(res.seconds, 2),
        }))
        return
    t = Table(title=f"{spec.format} ({spec.quant_algo}) -> {escape(str(res.out))}")
    for col in ("linears", "KV cache", "calibration tokens", "pattern checked in", "seconds"):
        t.add_column(col)
    t.add_row(str(len(spec.linears)), spec.kv_cache or "not quantized", str(res.calib_tokens),
              f"{res.checked_weights} weights" if spec.pattern else "dense model", f"{res.seconds:.1f}")
    console.print(t)
    kept = [m for m in spec.exclude_modules if m != "lm_head"]
    if kept:
        console.print(f"kept unquantized (--exclude, in the input dtype): {len(kept)} linears, e.g. {', '.join(kept[:4])}",
                      markup=False, highlight=False)
    if spec.pattern:
        console.print(f"[green]pattern {escape(spec.pattern)} holds[/] after every transform")
    console.print(f"wrote {escape(str(res.out))} (export it with `sparse-trt export trtllm {escape(str(res.out))} -o CKPT`; "
                  f"`sparse-trt eval {escape(str(res.out))}` simulates the quantized engine)")
