"""The retrieval targets table from the run directories benchmarks/retrieval_targets.sh wrote: one row per set and
retriever, nDCG@10 / MRR@10 / Recall@10 / Recall@100, queries, p50/p99 latency.

    python benchmarks/retrieval_table.py runs/retrieval
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = [
    "bm25",
    "minilm-l6",
    "minilm-l6-d96",
    "finetuned",
    "finetuned-d96",
    "finetuned-1k",
    "finetuned+rerank",
    "finetuned+rerank-fused",
]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/retrieval")
    print("| set | retriever | queries | nDCG@10 | MRR@10 | R@10 | R@100 | p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sorted(p for p in root.iterdir() if p.is_dir()):
        # test rows only: dev+rerank is the dev evaluation that chose the fusion weight (benchmarks/rerank_targets.sh)
        runs = {p.name: p for p in s.iterdir() if (p / "metrics.json").is_file() and not p.name.startswith("dev")}
        for name in sorted(runs, key=lambda n: ORDER.index(n) if n in ORDER else 99):
            m = json.loads((runs[name] / "metrics.json").read_text())
            t, lat = m["test"], m["latency_ms"]
            print(
                f"| {s.name} | {name} | {t['n']} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | {t['recall@10']:.4f} | "
                f"{t['recall@100']:.4f} | {lat['p50']:.1f} / {lat['p99']:.1f} |"
            )


if __name__ == "__main__":
    main()
