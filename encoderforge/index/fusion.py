"""Re-ranking fused with the first stage: a cross-encoder's scores and the retriever's live on different scales, so
each is z-scored over one query's re-ranked candidates and the two are mixed linearly,

    fused = w * z(re-ranker) + (1 - w) * z(first stage)          w = 1: the re-ranker alone, w = 0: the first stage

the interpolation that multi-stage retrieval papers tune on dev data (e.g. Wang et al. 2021, "BERT-based Dense
Retrievers Require Interpolation with BM25"): a re-ranker trained on little data still adds what its first stage
misses without throwing away what the first stage knew. `eval-retrieval --rerank-weight W` applies it; its
OUT/rerank.tsv keeps both scores per candidate so a weight can be chosen on dev queries without re-scoring
(`choose_weight`: `eval-retrieval --rerank-weight auto --dev-queries`, and benchmarks/rerank_weight.py).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.index.metrics import evaluate_run

WEIGHTS = tuple(i / 10 for i in range(11))  # the grid a weight is chosen from: 0, 0.1, ..., 1


def zscore(x: np.ndarray) -> np.ndarray:
    """(n,) -> standardised (n,); a constant list becomes zeros."""
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def fuse(first: Sequence[float], rerank: Sequence[float], weight: float) -> np.ndarray:
    """(n,) fused scores of one query's candidates (module docstring)."""
    if not 0 <= weight <= 1:
        raise EncoderforgeError(f"--rerank-weight must be in [0, 1] (1 = the re-ranker alone), got {weight}")
    if len(first) != len(rerank):
        raise EncoderforgeError(f"fuse: {len(first)} first-stage scores but {len(rerank)} re-ranker scores")
    a, b = np.asarray(first, dtype=np.float64), np.asarray(rerank, dtype=np.float64)
    if weight == 1 or not len(b):
        return b  # the re-ranker's own order, ties and all
    return weight * zscore(b) + (1 - weight) * zscore(a)


def choose_weight(
    cands: Mapping[str, Sequence[tuple[str, float, float]]],
    qrels: Mapping[str, Mapping[str, int]],
    queries: Sequence[str] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """The fusion weight with the best mean nDCG@10 over judged dev queries, and the whole curve [(w, nDCG@10)].

    `cands`: per query, its re-ranked candidates as (doc id, first-stage score, re-ranker score) in first-stage
    order (as rerank.tsv lists them); each weight's ranking sorts the fused scores stably, so ties keep the
    first-stage order exactly as `eval-retrieval --rerank-weight w` ranks them. `queries`: the dev queries scored
    (default: those of `cands`); only those with judgements count, and one the first stage found nothing for scores
    0 at every weight, as `eval-retrieval` scores it. Ties between weights go to the larger weight (more of the
    re-ranker). The re-ranked depth should be >= 10, so that nDCG@10 depends on the candidates alone."""
    judged = [q for q in (cands if queries is None else queries) if q in qrels]
    if not judged:
        raise EncoderforgeError("choose the re-rank weight: none of the dev queries has judgements in --dev-qrels")
    curve = []
    for w in WEIGHTS:
        run = {}
        for q in judged:
            c = cands.get(q, ())
            order = np.argsort(-fuse([f for _, f, _ in c], [r for _, _, r in c], w), kind="stable")
            run[q] = {c[i][0]: float(len(c) - rank) for rank, i in enumerate(order)}  # scores = ranks: no ties left
        curve.append((w, evaluate_run(run, {q: qrels[q] for q in judged}).mean["ndcg@10"]))
    return max(curve, key=lambda p: (p[1], p[0]))[0], curve
