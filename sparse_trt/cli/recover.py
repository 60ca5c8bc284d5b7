"""``sparse-trt recover``: sparsity-aware distillation of a pruned model from its dense teacher."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import console, handle_errors, progress_bar, setup_logging

app = typer.Typer()


@app.command("recover")
@handle_errors
def recover_cmd(
    pruned: str = typer.Argument(..., help="Pruned model folder (output of `sparse-trt prune`, with sparsity.json)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for the recovered model (HF checkpoint + sparsity.json), written atomically."),
    teacher: str = typer.Option(..., "--teacher", help="The dense model the pruned folder was made from: folder, hub id, .gguf file, or 'smollm2'."),
    data: str = typer.Option("wiki", "--data", help="Training text: 'wiki' (calibration pool of the built-in corpus, never its held-out part), FILE.txt or FILE.jsonl."),
    eval_data: str = typer.Option("wiki", "--eval-data", help="Held-out text for the before/after perplexity and KL ('wiki': the built-in corpus's held-out part)."),
    tokens: int = typer.Option(131072, "--tokens", help="Training tokens (rounded down to whole optimizer steps of batch x grad-accum windows)."),
    seqlen: int = typer.Option(512, "--seqlen", help="Tokens per training and evaluation window."),
    batch: int = typer.Option(4, "--batch", help="Windows per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak AdamW learning rate."),
    warmup: float = typer.Option(0.05, "--warmup", help="Fraction of the optimizer steps spent warming up linearly from 0 (transformers' schedule: the first step then has learning rate 0), then cosine decay to 0."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW decoupled weight decay on weight matrices (pruned weights stay exactly zero)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Softmax temperature of the logit distillation (KL scaled by T^2)."),
    hidden_loss_weight: float = typer.Option(0.0, "--hidden-loss-weight", help="Weight of the normalised per-layer hidden-state loss (SquareHead-like); 0: logits only."),
    eval_windows: int = typer.Option(16, "--eval-windows", help="Held-out windows measured before and after (0: skip)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Also measure held-out perplexity and KL every K optimizer steps (the curve in sparsity.json)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Write an atomic checkpoint every K optimizer steps (0: none), for --resume."),
    seed: int = typer.Option(0, "--seed", help="Seed for window sampling and order."),
    grad_checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in the backward pass (less memory, ~25% more compute)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (student and teacher both live there)."),
    dtype: str = typer.Option("auto", "--dtype", help="Compute precision: auto (bfloat16 autocast on a CUDA GPU that supports it, else float32), float32, bfloat16, float16 (autocast; weights stay float32)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint (bit-identical result)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only once the new one is complete)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow models that ship custom code."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    """Fine-tune the kept weights of PRUNED by distillation from the dense teacher; pruned weights stay exactly zero."""
    setup_logging(verbose)
    import torch

    from sparse_trt.data.text import parse_source
    from sparse_trt.recover.api import RecoverRequest, run_recover
    from sparse_trt.recover.train import StepInfo, TrainSettings

    from .options import resolve_device, resolve_dtype

    dev = resolve_device(device)
    compute = resolve_dtype(dtype)
    if dtype.strip().lower() == "auto":
        compute = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
    elif compute == torch.float32:
        compute = None
    settings = TrainSettings(
        tokens=tokens, seqlen=seqlen, batch=batch, grad_accum=grad_accum, lr=lr, warmup=warmup,
        weight_decay=weight_decay, temperature=temperature, hidden_loss_weight=hidden_loss_weight,
        checkpoint_every=checkpoint_every, eval_every=eval_every, seed=seed, gradient_checkpointing=grad_checkpointing,
    )
    req = RecoverRequest(
        pruned=pruned, out=out, teacher=teacher, settings=settings, data=parse_source(data),
        eval_data=parse_source(eval_data), eval_windows=eval_windows, device=dev, compute_dtype=compute,
        resume=resume, overwrite=overwrite, trust_remote_code=trust_remote_code,
    )
    with progress_bar("recover", total=settings.steps) as (prog, task):

        def stage(text: str) -> None:
            prog.update(task, description=text)

        def on_step(i: StepInfo) -> None:
            prog.update(
                task, completed=i.step, total=i.steps,
                description=f"step {i.step}/{i.steps} loss {i.loss:.4f} lr {i.lr:.2e} {i.tokens_per_s:,.0f} tok/s",
            )

        outcome = run_recover(req, progress=on_step, on_stage=stage)
    r = outcome.record
    h = r.heldout
    console.print(
        f"[green]recovered[/] {escape(pruned)} in {r.steps} steps / {r.tokens:,} tokens "
        f"({r.seconds:.0f}s, {r.tokens_per_s:,.0f} tok/s); every pruned weight is still zero",
        highlight=False,
    )
    if h.get("before") and h.get("after"):
        b, a = h["before"], h["after"]
        console.print(
            f"held-out ({escape(str(h['data']))}, {h['windows']} x {h['seqlen']}): perplexity {b['perplexity']:.3f} -> "
            f"{a['perplexity']:.3f} (teacher {h['teacher_perplexity']:.3f}), KL to teacher {b['kl']:.4f} -> {a['kl']:.4f}",
            highlight=False,
        )
    console.print(f"wrote {escape(str(outcome.out))} (check it with `sparse-trt verify {escape(str(outcome.out))}`)", highlight=False)
