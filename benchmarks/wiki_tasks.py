"""Write an offline lm-evaluation-harness task built from the built-in corpus's HELD-OUT wiki articles.

`wiki_next_sentence`: for each held-out article with at least two sentences, the context is its first
sentence and the model picks the true second sentence among four (three distractors: second sentences of
other held-out articles, drawn with a fixed seed). Scored with lm-eval's `acc` (sum of log-likelihoods)
and `acc_norm` (per byte). Chance is 25%. Calibration and recovery never see these articles (they draw
from the calibration pool), so the task measures what pruning and recovery did to the model's ability to
continue text coherently, beside perplexity and KL. It is a domain-matched proxy, not a standard
benchmark: use standard lm-eval tasks (hellaswag, arc_easy, ...) where the hub or a datasets cache is
reachable.

    python3 benchmarks/wiki_tasks.py -o /tmp/wiki_tasks [--docs 500]
    sparse-trt eval MODEL --tasks wiki_next_sentence --tasks-path /tmp/wiki_tasks
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from sparse_trt.data.text import wiki_split

SEED = 1234
# a sentence ends at . ! ? followed by whitespace and an upper-case letter; abbreviations such as
# "U.S. Army" can split early, which only makes some contexts shorter
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(" ".join(text.split())) if s.strip()]


def build(docs: int) -> list[dict]:
    _calib, test = wiki_split()
    pairs = []
    for text in test:
        s = sentences(text)
        if len(s) >= 2 and 20 <= len(s[0]) <= 400 and 20 <= len(s[1]) <= 400:
            pairs.append((s[0], s[1]))
    rng = random.Random(SEED)
    rows = []
    for i, (first, second) in enumerate(pairs[:docs]):
        others = [j for j in range(len(pairs)) if j != i]
        distract = [pairs[j][1] for j in rng.sample(others, 3)]
        choices = [second, *distract]
        order = list(range(4))
        rng.shuffle(order)
        rows.append({"context": first, "choices": [" " + choices[k] for k in order], "answer": order.index(0)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, required=True, help="folder to write the task YAML and JSONL into")
    ap.add_argument("--docs", type=int, default=500, help="documents (held-out articles) in the task")
    args = ap.parse_args()
    rows = build(args.docs)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "wiki_next_sentence.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (args.out / "wiki_next_sentence.yaml").write_text(
        "task: wiki_next_sentence\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    print(f"{len(rows)} documents -> {args.out}")


if __name__ == "__main__":
    main()
