#!/usr/bin/env python3
"""Quality of FP8 / INT8-SmoothQuant on top of 2:4: dense/sparse x fp/fp8/int8-sq perplexity.

Quantized rows are *simulated* (eval/simquant.py: weights, activations and, where asked, the KV cache
quantize-dequantized with the scales `sparse-trt export trtllm` writes), so this runs on a CPU.

    python benchmarks/quantization.py --sparse PRUNED_DIR --out bench_out/quant
    python benchmarks/quantization.py --sparse PRUNED_DIR --variants fp8,int8-sq,fp8+kv,int8-sq@0.5

Calibration: built-in wiki corpus, calibration part, 32 windows x 512 tokens, seed 0 (as pruning);
evaluation: the first 32 held-out windows x 512. Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def parse_variant(v: str) -> tuple[str, str | None, float, tuple[str, ...]]:
    """'fp8' | 'fp8+kv' | 'int8-sq@0.5' | 'fp8-x*mlp.down_proj;model.layers.0.*' -> (format, kv format, alpha, excludes)."""
    excludes: tuple[str, ...] = ()
    if "-x" in v:
        v, ex = v.split("-x", 1)
        excludes = tuple(e for e in ex.split(";") if e)
    alpha = 1.0
    if "@" in v:
        v, a = v.split("@")
        alpha = float(a)
    kv = None
    if v.endswith("+kv"):
        v = v[: -len("+kv")]
        kv = {"fp8": "fp8", "int8-sq": "int8"}[v]
    return v, kv, alpha, excludes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", default="smollm2", help="dense model (folder, .gguf or 'smollm2'); 'none' skips it")
    ap.add_argument("--sparse", default=None, help="pruned folder (sparse-trt prune output); left out: dense rows only")
    ap.add_argument("--variants", default="fp8,int8-sq", help="comma list: fp8, int8-sq, fp8+kv, int8-sq+kv, int8-sq@ALPHA, "
                    "FORMAT-xGLOB[;GLOB] (quantize --exclude), e.g. fp8-x*mlp.down_proj")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--no-fp", action="store_true", help="skip the unquantized row (e.g. when another process runs it)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/quant"))
    args = ap.parse_args()

    import torch

    from sparse_trt.data.text import TextSource
    from sparse_trt.eval.api import run_eval
    from sparse_trt.quantize.api import QuantizeOptions, quantize_model
    from sparse_trt.quantize.formats import parse_format, parse_kv_format

    cpu = torch.device("cpu")
    wiki = TextSource("wiki")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    models = [("dense", args.dense)] if args.dense != "none" else []
    models += [("sparse 2:4", args.sparse)] if args.sparse else []
    for kind, src in models:
        fp = None
        if not args.no_fp:
            t0 = time.perf_counter()
            fp = run_eval(src, wiki, args.seqlen, args.eval_windows, cpu, record=False, simulate_quant=False)
            rows.append({"model": kind, "variant": "fp (checkpoint dtype)", "perplexity": fp.perplexity, "tokens": fp.tokens,
                         "eval_s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
        for v in [x for x in args.variants.split(",") if x]:
            fmt, kv, alpha, excludes = parse_variant(v)
            f = parse_format(fmt)
            opts = QuantizeOptions(f, parse_kv_format(kv, f), wiki, nsamples=args.nsamples, seqlen=args.seqlen, seed=0,
                                   alpha=alpha, exclude=excludes)
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in v.replace("@", "-a"))
            qdir = args.out / f"{kind.split()[0]}-{slug}"
            t0 = time.perf_counter()
            q = quantize_model(src, qdir, opts, device=cpu, overwrite=True)
            tq = time.perf_counter() - t0
            r = run_eval(str(q.out), wiki, args.seqlen, args.eval_windows, cpu, record=False)
            rows.append({"model": kind, "variant": v, "perplexity": r.perplexity, "tokens": r.tokens,
                         **({"vs_fp": r.perplexity / fp.perplexity} if fp is not None else {}), "quantize_s": round(tq, 1),
                         "eval_s": round(time.perf_counter() - t0 - tq, 1), "checked_weights": q.checked_weights})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "calibration": f"wiki {args.nsamples} x {args.seqlen}, seed 0",
            "eval": f"wiki held-out {args.eval_windows} x {args.seqlen}"}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("\n| model | variant | perplexity | vs fp | quantize s | eval s |\n|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{(r['vs_fp'] - 1) * 100:+.2f}%" if "vs_fp" in r else "–"
        print(f"| {r['model']} | {r['variant']} | {r['perplexity']:.3f} | {vs} | {r.get('quantize_s', '–')} | {r['eval_s']} |")


if __name__ == "__main__":
    import sys

    from sparse_trt.core.errors import SparseTrtError

    try:
        main()
    except SparseTrtError as e:  # a refused input is a message, not a traceback
        print(f"error: {e.message}" + (f"\nfix: {e.fix}" if e.fix else ""), file=sys.stderr)
        sys.exit(e.exit_code)
