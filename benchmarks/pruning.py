#!/usr/bin/env python3
"""Pruning leaderboard on SmolLM2-135M with the built-in wiki corpus.

For every (method, pattern): prune in a fresh process (prune seconds from the manifest, wall
seconds and peak RSS of the process from the OS), then perplexity on the held-out wiki windows.
Same calibration for all: 32 windows x 512 tokens, seed 0; evaluation: 32 windows x 512.

    python benchmarks/pruning.py --out bench_out/pruning            # every method, 2:4, 4:8, 50%
    python benchmarks/pruning.py --methods sparsegpt,wanda --patterns 2:4

Writes OUT/results.json and prints a Markdown table (paste it into benchmarks/RESULTS.md with the
machine, date and command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, '') of one child process, from the kernel's accounting (wait4)."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, rusage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return wall, rusage.ru_maxrss / 1024.0, ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,sparsegpt-refit,sparsegpt-block")
    ap.add_argument("--patterns", default="2:4,4:8,0.5")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--opt", action="append", default=[], help="METHOD:KEY=VALUE passed to that method's --opt")
    ap.add_argument("--out", type=Path, default=Path("bench_out/pruning"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "sparse_trt.cli.main"]

    def evaluate(model_dir: str, tag: str) -> float:
        js = args.out / f"ppl-{tag}.json"
        run_child(exe + ["eval", model_dir, "--seqlen", str(args.seqlen), "--max-windows", str(args.eval_windows),
                         "--device", args.device, "--json", str(js), "--no-record"])
        return json.loads(js.read_text())["perplexity"]

    rows = [{"method": "dense", "pattern": "-", "perplexity": evaluate(args.model, "dense")}]
    print(f"dense: ppl {rows[0]['perplexity']:.2f}", flush=True)
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            tag = f"{method}-{pattern.replace(':', 'of')}"
            out_dir = args.out / tag
            cmd = exe + ["prune", args.model, "-o", str(out_dir), "--method", method, "--pattern", pattern,
                         "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--seed", "0",
                         "--device", args.device, "--overwrite"]
            for o in args.opt:
                m, kv = o.split(":", 1)
                if m == method:
                    cmd += ["--opt", kv]
            wall, rss, _ = run_child(cmd)
            manifest = json.loads((out_dir / "sparsity.json").read_text())
            ppl = evaluate(str(out_dir), tag)
            row = {"method": method, "pattern": pattern, "perplexity": ppl, "prune_s": manifest["timings"]["prune_s"],
                   "process_wall_s": round(wall, 1), "peak_rss_mib": round(rss), "options": manifest["method_options"]}
            rows.append(row)
            print(f"{tag}: ppl {ppl:.2f}  prune {row['prune_s']:.1f}s  wall {wall:.1f}s  rss {rss:.0f} MiB", flush=True)

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "calibration": {"source": "wiki", "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0},
        "evaluation": {"source": "wiki (held-out)", "windows": args.eval_windows, "seqlen": args.seqlen},
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| method | pattern | perplexity | prune s | process wall s | peak RSS MiB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['pattern']} | {r['perplexity']:.2f} | {r.get('prune_s', '-')} | "
              f"{r.get('process_wall_s', '-')} | {r.get('peak_rss_mib', '-')} |")


if __name__ == "__main__":
    main()
