#!/usr/bin/env python3
"""Quick ablation of pruning variants: prune only the first L decoder layers, keep the rest dense.

A full prune + evaluation of SmolLM2 takes several minutes per row on a 2-core CPU; comparing
ideas on the first layers is much cheaper and ranks them the same way in what we measured
(benchmarks/RESULTS.md). Every variant sees the same calibration (wiki, NSAMPLES x SEQLEN, seed 0)
and is scored by perplexity on EVAL held-out wiki windows, with the rest of the model dense.

    python benchmarks/ablation.py --layers 4 --variant sparsegpt --variant sparsegpt-refit \\
        --variant 'sparsegpt-block:block_steps=8,block_lr=1e-3' --variant 'sparsegpt@dense-inputs'

A variant is METHOD[:KEY=VALUE,...][@dense-inputs]; ``@dense-inputs`` calibrates every linear of a
layer on the unpruned layer's inputs instead of the pruned predecessors' outputs (the walker's
``true_sequential=False``). One JSON line per variant on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

from sparse_trt.core.patterns import parse_pattern
from sparse_trt.data.text import TextSource
from sparse_trt.data.windows import calibration_windows, eval_windows
from sparse_trt.eval.perplexity import perplexity
from sparse_trt.models.loading import load_model
from sparse_trt.prune.methods import get_method, parse_options
from sparse_trt.prune.sequential import WalkConfig, parent_and_attr, prune_model


def parse_variant(text: str) -> tuple[str, dict[str, str], bool]:
    seq = True
    if text.endswith("@dense-inputs"):
        text, seq = text[: -len("@dense-inputs")], False
    name, _, opts = text.partition(":")
    options = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
    return name, options, seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layers", type=int, default=4, help="prune decoder layers [0, L)")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", action="append", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    loaded = load_model(args.model)
    model, adapter = loaded.model, loaded.adapter
    bos = loaded.add_bos()
    calib = calibration_windows(loaded.tokenizer, TextSource("wiki"), args.nsamples, args.seqlen, 0, bos)
    ev = eval_windows(loaded.tokenizer, TextSource("wiki"), args.seqlen, args.eval_windows, bos)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    parent, attr = parent_and_attr(model, adapter.layers_path)
    full = getattr(parent, attr)
    pattern = parse_pattern(args.pattern)

    def ppl() -> float:
        nll, _ = perplexity(model, ev, cpu, skip_first=1 if bos else 0)
        return math.exp(nll)

    print(json.dumps({"variant": "dense", "ppl": round(ppl(), 3)}), flush=True)
    for text in args.variant:
        name, opts, seq = parse_variant(text)
        model.load_state_dict(dense_state)
        spec = get_method(name)
        cfg = WalkConfig(method=spec, options=parse_options(spec, opts), pattern=pattern, device=cpu,
                         store_device=cpu, chunk_samples=args.nsamples, true_sequential=seq)
        setattr(parent, attr, nn.ModuleList(list(full)[: args.layers]))
        try:
            t0 = time.perf_counter()
            records = prune_model(model, adapter, calib, cfg)
            secs = time.perf_counter() - t0
        finally:
            setattr(parent, attr, full)
        print(json.dumps({
            "variant": text, "layers": args.layers, "pattern": args.pattern, "ppl": round(ppl(), 3),
            "prune_s": round(secs, 1), "sum_rel_error": round(sum(r.rel_error or 0 for r in records), 4),
        }), flush=True)


if __name__ == "__main__":
    main()
