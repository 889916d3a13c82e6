"""Paired comparison of two retrieval runs on the same queries: per-query nDCG@10 (encoderforge.index.metrics,
trec_eval's conventions, asserted against pytrec_eval in tests/index/test_metrics.py) of run B minus run A, its mean, and a seeded paired bootstrap 95% interval and the share of resamples
in which B is not better — so a gain of a few thousandths is read against its noise, not by eye.

    python benchmarks/paired_ndcg.py QRELS RUN_A_DIR RUN_B_DIR [--rounds 10000]
    python benchmarks/paired_ndcg.py QRELS FULL_WIDTH_RUN CUT_RUN --ratio 0.97   # B / A (a Matryoshka cut's share)
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
    ap.add_argument("--ratio", type=float, default=None, help="report mean B / mean A and how often it falls below this")
    args = ap.parse_args()
    qrels = read_qrels(args.qrels)
    a, b = per_query(qrels, args.a), per_query(qrels, args.b)
    queries = sorted(set(a) | set(b))  # a query a run retrieved nothing relevant for scores 0
    va, vb = np.array([a.get(q, 0.0) for q in queries]), np.array([b.get(q, 0.0) for q in queries])
    idx = np.random.default_rng(0).integers(0, len(queries), (args.rounds, len(queries)))
    if args.ratio is not None:
        r = vb[idx].mean(1) / np.maximum(va[idx].mean(1), 1e-12)
        lo, hi = np.percentile(r, [2.5, 97.5])
        print(
            f"{args.b.name} / {args.a.name}: nDCG@10 {vb.mean():.4f} / {va.mean():.4f} = {vb.mean() / va.mean():.4f} over "
            f"{len(queries)} queries (95% bootstrap {lo:.4f} .. {hi:.4f}; below {args.ratio} in {(r < args.ratio).mean():.1%} "
            "of resamples)"
        )
        return
    d = vb - va
    boot = d[idx].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(
        f"{args.b.name} - {args.a.name}: nDCG@10 {d.mean():+.4f} over {len(d)} queries "
        f"(95% bootstrap {lo:+.4f} .. {hi:+.4f}; B not better in {(boot <= 0).mean():.1%} of resamples; "
        f"B better on {(d > 0).sum()}, worse on {(d < 0).sum()})"
    )


if __name__ == "__main__":
    main()
