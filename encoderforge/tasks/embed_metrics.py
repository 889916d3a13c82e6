"""Scores of an embedding model on held-out pairs: ranking metrics of a query x document score matrix (binary
relevance; trec_eval's conventions are in index/metrics.py, which the retrieval evaluation uses) and correlations of
cosines with graded scores. Shapes: Q queries, D documents."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def ranking_metrics(scores: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> dict[str, float]:
    """nDCG@10 (binary gain, log2 discount), MRR@10, Recall@1/10 of (Q, D) scores; `pairs` = (query, relevant doc).
    A query with several relevant documents counts them all (nDCG's ideal ranking puts all of them first)."""
    relevant: dict[int, set[int]] = {}
    for q, d in pairs:
        relevant.setdefault(q, set()).add(d)
    top = torch.topk(scores, min(10, scores.shape[1]), dim=1).indices.tolist()  # (Q, 10)
    disc = [1 / math.log2(r + 2) for r in range(10)]
    ndcg = mrr = r1 = r10 = 0.0
    for q, rel in relevant.items():
        hits = [d in rel for d in top[q]]
        ndcg += sum(disc[r] for r, h in enumerate(hits) if h) / sum(disc[: min(len(rel), 10)])
        mrr += next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0)
        r1 += float(hits[0]) / len(rel)
        r10 += sum(hits) / len(rel)
    n = len(relevant)
    return {"ndcg@10": ndcg / n, "mrr@10": mrr / n, "recall@1": r1 / n, "recall@10": r10 / n}


def correlations(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman (ranks by argsort; ties broken by position) without scipy."""

    def rank(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)

    def r(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0

    return {"spearman": r(rank(pred), rank(gold)), "pearson": r(pred, gold)}
