"""Choose `eval-retrieval --rerank-weight` on dev queries without re-scoring: read the OUT/rerank.tsv of one dev
evaluation with the re-ranker (both scores of every re-ranked candidate) and print nDCG@10 / MRR@10 of the fusion
w * z(re-ranker) + (1 - w) * z(first stage) for w = 0, 0.1, ..., 1 (index/fusion.py), then the best w.

    python benchmarks/rerank_weight.py runs/retrieval/license/dev+rerank runs/data/retrieval/license/dev.qrels.tsv

The re-ranked depth must be >= 10 (nDCG@10 then depends on the candidates alone).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from encoderforge.index.fusion import fuse
from encoderforge.index.metrics import evaluate_run
from encoderforge.index.readers import read_qrels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dev_run", type=Path, help="an eval-retrieval --rerank output directory (dev queries)")
    ap.add_argument("qrels", type=Path)
    a = ap.parse_args()
    cands: dict[str, list[tuple[str, float, float]]] = collections.defaultdict(list)
    for line in (a.dev_run / "rerank.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        q, d, first, rerank = line.split("\t")
        cands[q].append((d, float(first), float(rerank)))
    judged = read_qrels(a.qrels)
    qrels = {q: judged[q] for q in cands}
    best = (-1.0, 0.0)
    print(f"{a.dev_run}: {len(cands)} queries, depth {min(len(c) for c in cands.values())}")
    print("| weight | nDCG@10 | MRR@10 |\n|---|---|---|")
    for w in np.round(np.linspace(0, 1, 11), 2):
        run = {}
        for q, c in cands.items():
            fused = fuse([x[1] for x in c], [x[2] for x in c], float(w))
            order = np.argsort(-fused, kind="stable")
            run[q] = {c[i][0]: float(len(c) - r) for r, i in enumerate(order)}
        m = evaluate_run(run, qrels).mean
        print(f"| {w:.1f} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} |")
        best = max(best, (m["ndcg@10"], float(w)))
    print(f"best weight on dev: {best[1]:.1f} (nDCG@10 {best[0]:.4f})")


if __name__ == "__main__":
    main()
