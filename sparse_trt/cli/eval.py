"""``sparse-trt eval``: perplexity of a dense or pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .common import console, handle_errors, out, progress_bar, setup_logging


def check_eval_outputs(model: str, max_windows: int | None, json_path: Path | None, record: bool) -> None:
    """Refuse what would fail only after the perplexity was computed (bad --json path, corrupt manifest)."""
    from sparse_trt.core.atomic import check_output_location
    from sparse_trt.core.errors import InputError
    from sparse_trt.core.manifest import MANIFEST_NAME, Manifest

    if max_windows is not None and max_windows < 1:
        raise InputError(f"--max-windows {max_windows} must be at least 1", fix="leave it out to use every window")
    if json_path is not None:
        if json_path.is_dir():
            raise InputError(f"--json '{json_path}' is a folder", fix="give a file name, e.g. --json ppl.json")
        check_output_location(json_path, "--json file")
    if record and (Path(model) / MANIFEST_NAME).is_file():
        Manifest.load(Path(model))  # a corrupt sparsity.json is an error now, not after the evaluation


app = typer.Typer()


@app.command("eval")
@handle_errors
def eval_cmd(
    model: str = typer.Argument(..., help="Model folder (dense or pruned), hub id, .gguf file, or 'smollm2'."),
    data: str = typer.Option("wiki", "--data", help="'wiki' (held-out part of the built-in corpus), FILE.txt or FILE.jsonl."),
    seqlen: int = typer.Option(2048, "--seqlen", help="Tokens per window (non-overlapping)."),
    max_windows: int | None = typer.Option(None, "--max-windows", help="Evaluate at most this many windows."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16, bfloat16."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON here."),
    record: bool = typer.Option(True, "--record/--no-record", help="Store the result in the folder's sparsity.json (if any)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow models that ship custom code."),
    simulate_quant: bool = typer.Option(
        True, "--simulate-quant/--no-simulate-quant",
        help="For a folder with quantization.json (from `sparse-trt quantize`): quantize-dequantize weights, "
        "activations and KV cache with its scales, as the FP8 / INT8 engine computes (CPU is enough).",
    ),
    reference_model: str | None = typer.Option(
        None, "--reference",
        help="Also report the mean token KL(reference || model) on the same held-out windows, e.g. against the "
        "dense model a pruned one came from (recorded as quality.kl).",
    ),
    tasks: str | None = typer.Option(
        None, "--tasks",
        help="Also run EleutherAI lm-evaluation-harness tasks, comma-separated (e.g. arc_easy,hellaswag); "
        "needs the lm-eval extra (recorded as quality.tasks).",
    ),
    tasks_path: Path | None = typer.Option(None, "--tasks-path", help="Folder of lm-eval task YAML files (local tasks, offline)."),
    tasks_limit: int | None = typer.Option(None, "--tasks-limit", help="At most this many documents per lm-eval task."),
    tasks_batch_size: int = typer.Option(
        1, "--tasks-batch-size", min=1,
        help="Requests per forward pass in lm-eval (its --batch_size; larger is faster where memory allows).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Perplexity over non-overlapping held-out windows, with BOS handled per model family.

    Prints the window spec with every figure and, for a pruned folder whose sparsity.json holds a dense
    reference (the demo records one), that reference and whether it was measured on the same windows.
    """
    from sparse_trt.core.manifest import MANIFEST_NAME
    from sparse_trt.data.text import parse_source
    from sparse_trt.eval.api import perplexity_key, recorded_quality, run_eval, same_windows

    from .options import resolve_device, resolve_dtype

    setup_logging(verbose)
    check_eval_outputs(model, max_windows, json_path, record)
    src = parse_source(data)
    with progress_bar("perplexity windows") as (prog, task):
        res = run_eval(
            model, src, seqlen, max_windows, resolve_device(device), resolve_dtype(dtype), record,
            progress=lambda i, n: prog.update(task, completed=i, total=n), trust_remote_code=trust_remote_code,
            simulate_quant=simulate_quant,
        )
    reference = recorded_quality(Path(model)) if Path(model).is_dir() else None
    spec = f"{res.data}, {res.windows} windows x {res.seqlen} tokens{', BOS' if res.bos else ''}"
    t = Table(title=f"perplexity ({spec})")
    for c in ("model", "data", "seqlen", "windows", "tokens", "BOS", "perplexity"):
        t.add_column(c)
    t.add_row(res.model, res.data, str(res.seqlen), str(res.windows), str(res.tokens), "yes" if res.bos else "no", f"{res.perplexity:.3f}")
    if reference is not None:
        t.add_row("dense reference (from sparsity.json)", reference.data, str(reference.seqlen), str(reference.windows),
                  str(reference.tokens), "yes" if reference.bos else "no", f"{reference.perplexity:.3f}")
    out.print(t)
    if res.model.endswith(" simulated]"):
        console.print("quantized folder: weights, activations (and a quantized KV cache) were quantize-dequantized with its "
                      "quantization.json scales, except lm_head and the linears in its exclude_modules (quantize --exclude), "
                      "which run unquantized as in the engine (--no-simulate-quant evaluates the unquantized weights)",
                      markup=False)
    if reference is not None:
        if same_windows(res, reference):
            console.print(f"perplexity x{res.perplexity / reference.perplexity:.2f} of the dense reference on the same windows")
        else:
            console.print(
                "[yellow]note:[/] the dense reference was measured on other windows "
                f"({reference.data}, {reference.windows} x {reference.seqlen}); the two figures do not compare. "
                f"Re-run with --seqlen {reference.seqlen} --max-windows {reference.windows}, or evaluate the dense "
                "model with the same options."
            )
    if record and (Path(model) / MANIFEST_NAME).is_file():
        console.print(f"recorded in {Path(model) / MANIFEST_NAME} (quality.{perplexity_key(model, simulate_quant)})")
    if json_path is not None:
        from sparse_trt.core.atomic import atomic_write_text

        atomic_write_text(json_path, json.dumps(res.to_dict(), indent=2) + "\n")
        console.print(f"wrote {json_path}")
    if reference_model is not None:
        from sparse_trt.eval.api import record_quality
        from sparse_trt.eval.kl import run_kl

        with progress_bar("KL to the reference") as (prog, task):
            kl = run_kl(model, reference_model, src, seqlen, max_windows, resolve_device(device), resolve_dtype(dtype),
                        progress=lambda i, n: prog.update(task, completed=i, total=n), trust_remote_code=trust_remote_code)
        out.print(f"mean token KL(reference || model) {kl.kl:.4f} nats over {kl.tokens} tokens ({spec}); perplexity "
                  f"{kl.perplexity:.3f}, reference {kl.reference_perplexity:.3f}", markup=False, highlight=False)
        if record and record_quality(Path(model), kl, key="kl"):
            console.print(f"recorded in {Path(model) / MANIFEST_NAME} (quality.kl)", markup=False)
    if tasks is not None:
        from rich.markup import escape

        from sparse_trt.eval.api import record_quality
        from sparse_trt.eval.tasks import run_tasks

        console.print(f"running lm-eval tasks {tasks} ...", markup=False)
        tr = run_tasks(model, tasks.split(","), resolve_device(device), resolve_dtype(dtype), tasks_path, tasks_limit,
                       batch_size=tasks_batch_size, trust_remote_code=trust_remote_code)
        tt = Table(title=f"lm-eval {tr.lm_eval_version}" + (f" (at most {tr.limit} documents per task)" if tr.limit else ""))
        for c in ("task", "metric", "value", "stderr"):
            tt.add_column(c)
        for sc in tr.scores:
            tt.add_row(escape(sc.task), sc.metric, f"{sc.value:.4f}", "-" if sc.stderr is None else f"{sc.stderr:.4f}")
        out.print(tt)
        if record and record_quality(Path(model), tr, key="tasks"):
            console.print(f"recorded in {Path(model) / MANIFEST_NAME} (quality.tasks)", markup=False)
