"""Render the held-out curve of `sparse-trt recover --eval-every K` runs (from sparsity.json) as a PNG.

    python3 benchmarks/recovery_curve.py RECOVERED_DIR [RECOVERED_DIR ...] -o curve.png

Left: held-out perplexity vs training tokens, with the dense teacher's perplexity on the same
windows as a dashed line. Right: mean token KL to the teacher. One line per folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparse_trt.core.deps import require
from sparse_trt.core.manifest import Manifest


def _earlier_tokens(source: Path) -> int:
    """Training tokens of the recoveries that produced ``source`` (0 for a one-shot folder)."""
    try:
        rec = Manifest.load(source).recovery
    except Exception:  # noqa: BLE001 - a moved or missing source folder: no offset
        return 0
    return 0 if rec is None else rec.tokens + _earlier_tokens(Path(rec.source))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p, ax_k) = plt.subplots(1, 2, figsize=(10, 4))
    dense = None
    for folder in args.folders:
        m = Manifest.load(folder)
        rec = m.recovery
        if rec is None or not (rec.curve or (rec.heldout.get("before") and rec.heldout.get("after"))):
            raise SystemExit(f"{folder}: no held-out measurements in sparsity.json's recovery section")
        points = list(rec.curve) or [{"tokens": 0, **rec.heldout["before"]}, {"tokens": rec.tokens, **rec.heldout["after"]}]
        offset = _earlier_tokens(Path(rec.source))  # a recovery of a recovered folder continues its x axis
        label = f"{m.method} {m.pattern} ({folder.name})"
        xs = [offset + p["tokens"] for p in points]
        ax_p.plot(xs, [p["perplexity"] for p in points], marker="o", label=label)
        ax_k.plot(xs, [p["kl"] for p in points], marker="o", label=label)
        dense = rec.heldout.get("teacher_perplexity") or dense
        spec = f"{rec.heldout['data']} held-out, {rec.heldout['windows']} x {rec.heldout['seqlen']} tokens"
    if dense:
        ax_p.axhline(dense, linestyle="--", color="gray", label=f"dense teacher {dense:.2f}")
    ax_p.set_xlabel("training tokens")
    ax_p.set_ylabel("perplexity")
    ax_p.set_title(f"perplexity ({spec})", fontsize=9)
    ax_k.set_xlabel("training tokens")
    ax_k.set_ylabel("mean token KL to dense (nats)")
    ax_k.set_title("KL(dense || model)", fontsize=9)
    for ax in (ax_p, ax_k):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
