"""Paired comparison of two retrieval runs on the same queries: per-query nDCG@10 (encoderforge.index.metrics,
trec_eval's conventions, asserted against pytrec_eval in tests/index/test_metrics.py) of run B minus run A, its mean, and a seeded paired bootstrap 95% interval and the share of resamples
in which B is not better — so a gain of a few thousandths is read against its noise, not by eye.

    python benchmarks/paired_ndcg.py QRELS RUN_A_DIR RUN_B_DIR [--rounds 10000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from encoderforge.index.metrics import ndcg_at
from encoderforge.index.readers import read_qrels


def per_query(qrels: dict[str, dict[str, int]], run_dir: Path) -> dict[str, float]:
    """query id -> nDCG@10 of the run's ranking (run.tsv: query, doc, rank, score, best first), over its queries."""
    order: dict[str, list[str]] = {}
    for line in (run_dir / "run.tsv").read_text().splitlines():
        q, d, _, _ = line.split("\t")
        order.setdefault(q, []).append(d)
    return {q: ndcg_at(docs, qrels.get(q, {})) for q, docs in order.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("qrels", type=Path)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rounds", type=int, default=10000)
    args = ap.parse_args()
    qrels = read_qrels(args.qrels)
    a, b = per_query(qrels, args.a), per_query(qrels, args.b)
    queries = sorted(set(a) | set(b))  # a query a run retrieved nothing relevant for scores 0
    d = np.array([b.get(q, 0.0) - a.get(q, 0.0) for q in queries])
    boot = d[np.random.default_rng(0).integers(0, len(d), (args.rounds, len(d)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(
        f"{args.b.name} - {args.a.name}: nDCG@10 {d.mean():+.4f} over {len(d)} queries "
        f"(95% bootstrap {lo:+.4f} .. {hi:+.4f}; B not better in {(boot <= 0).mean():.1%} of resamples; "
        f"B better on {(d > 0).sum()}, worse on {(d < 0).sum()})"
    )


if __name__ == "__main__":
    main()
