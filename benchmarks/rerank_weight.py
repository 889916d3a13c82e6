"""Choose `eval-retrieval --rerank-weight` on dev queries without re-scoring: read the OUT/rerank.tsv of one dev
evaluation with the re-ranker (both scores of every re-ranked candidate) and print nDCG@10 of the fusion
w * z(re-ranker) + (1 - w) * z(first stage) for w = 0, 0.1, ..., 1 (index/fusion.py), then the best w (what
`eval-retrieval --rerank-weight auto --dev-queries` picks).

    python benchmarks/rerank_weight.py runs/retrieval/license/dev+rerank runs/data/retrieval/license/dev.qrels.tsv

The re-ranked depth must be >= 10 (nDCG@10 then depends on the candidates alone).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from encoderforge.index.fusion import choose_weight
from encoderforge.index.readers import read_docs, read_qrels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dev_run", type=Path, help="an eval-retrieval --rerank output directory (dev queries)")
    ap.add_argument("qrels", type=Path)
    ap.add_argument(
        "--queries",
        type=Path,
        help="the queries JSONL that dev run evaluated: its judged queries with no candidates then count 0",
    )
    a = ap.parse_args()
    cands: dict[str, list[tuple[str, float, float]]] = collections.defaultdict(list)
    for line in (a.dev_run / "rerank.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        q, d, first, rerank = line.split("\t")
        cands[q].append((d, float(first), float(rerank)))
    qs = [d.id for d in read_docs(a.queries, what="queries")] if a.queries else None
    best, curve = choose_weight(cands, read_qrels(a.qrels), qs)
    print(f"{a.dev_run}: {len(cands)} queries with candidates, depth {min(len(c) for c in cands.values())}")
    print("| weight | nDCG@10 |\n|---|---|")
    for w, ndcg in curve:
        print(f"| {w:.1f} | {ndcg:.4f} |")
    print(f"best weight on dev: {best:.1f} (nDCG@10 {dict(curve)[best]:.4f})")


if __name__ == "__main__":
    main()
