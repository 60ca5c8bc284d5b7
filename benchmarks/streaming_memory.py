"""Peak resident memory of a streamed prune vs model size.

Writes synthetic LLaMA-shaped bf16 checkpoints layer by layer (``bench.synth.write_streamed_checkpoint``,
random weights, SmolLM2's tokenizer), prunes each in a fresh subprocess and records the process's peak
RSS (``VmHWM``), the model's size and the prune time as one JSON line per run; ``--plot`` renders a PNG.

    nice -n 5 python3 benchmarks/streaming_memory.py --presets llama-0.5b llama-1.5b --methods wanda \\
        --work /tmp/synth -o benchmarks/streaming_memory.jsonl --plot benchmarks/streaming_memory.png
    nice -n 5 python3 benchmarks/streaming_memory.py --model smollm2 --methods sparsegpt --nsamples 32 --seqlen 512 \\
        -o benchmarks/streaming_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
from pathlib import Path
from sparse_trt.core.patterns import parse_pattern
from sparse_trt.data.text import parse_source
from sparse_trt.prune.api import PruneRequest, run_prune
src, out, method, nsamples, seqlen, streaming = sys.argv[1:7]
t0 = time.perf_counter()
o = run_prune(PruneRequest(model=src, out=Path(out), method=method, pattern=parse_pattern("2:4"),
                           calib=parse_source("wiki"), nsamples=int(nsamples), seqlen=int(seqlen), seed=0,
                           device=torch.device("cpu"), streaming=streaming == "1", overwrite=True))
# VmHWM, not ru_maxrss: Linux carries the parent's memory-map peak into a spawned child's ru_maxrss.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"peak_rss_bytes": hwm,
                  "seconds": round(time.perf_counter() - t0, 1), "prune_s": o.manifest.timings.get("prune_s"),
                  "memory": o.manifest.memory}))
"""


def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=[], help="bench.synth presets to write and prune")
    ap.add_argument("--model", default=None, help="an existing model instead (e.g. smollm2)")
    ap.add_argument("--methods", nargs="+", default=["wanda"])
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--in-memory", action="store_true", help="also run the whole-model path")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sparse_trt_synth"))
    ap.add_argument("-o", "--out", type=Path, required=True, help="JSON lines file (appended)")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of peak RSS vs model size from --out")
    args = ap.parse_args()

    import torch

    from sparse_trt.bench.synth import write_streamed_checkpoint
    from sparse_trt.models.loading import builtin_dir, resolve_source

    sources = []
    for preset in args.presets:
        folder = args.work / preset
        if not (folder / "config.json").is_file():
            t0 = time.perf_counter()
            params = write_streamed_checkpoint(preset, folder, dtype=torch.bfloat16, seed=0,
                                               tokenizer_dir=builtin_dir("smollm2"), overwrite=True)
            print(f"wrote {preset}: {params / 1e9:.2f}B parameters in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        sources.append((preset, folder))
    if args.model:
        sources.append((args.model, Path(resolve_source(args.model).location)))
    for name, folder in sources:
        for method in args.methods:
            for streaming in ([True, False] if args.in_memory else [True]):
                out = args.work / f"out-{name}-{method}"
                run = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), method, str(args.nsamples),
                                      str(args.seqlen), "1" if streaming else "0"], capture_output=True, text=True)
                if run.returncode:
                    print(run.stderr[-3000:], file=sys.stderr)
                    continue
                rec = json.loads(run.stdout.strip().splitlines()[-1])
                rec.update(model=name, method=method, streaming=streaming, model_bytes=model_bytes(folder),
                           nsamples=args.nsamples, seqlen=args.seqlen,
                           load=open("/proc/loadavg").read().split()[:3])
                line = json.dumps(rec)
                print(line)
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    if args.plot:
        plot(args.out, args.plot)


def plot(jsonl: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in Path(jsonl).read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, streaming) in sorted({(r["method"], r["streaming"]) for r in rows}):
        pts = sorted((r["model_bytes"] / 1e9, r["peak_rss_bytes"] / 1e9) for r in rows
                     if r["method"] == method and r["streaming"] == streaming)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{method} ({'streamed' if streaming else 'whole model'})")
    lim = max(r["model_bytes"] for r in rows) / 1e9
    ax.plot([0, lim], [0, lim], color="grey", linestyle=":", label="model size")
    ax.set_xlabel("checkpoint size (GB)")
    ax.set_ylabel("peak RSS of the prune process (GB)")
    ax.set_title("sparse-trt prune: peak memory vs model size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
