"""Ranking metrics of a retrieval run against graded relevance judgements, computed exactly as trec_eval does.

Conventions (trec_eval 9.x, checked against pytrec_eval in tests/index/test_metrics.py):
- a run is {query id: {doc id: score}}, qrels are {query id: {doc id: relevance}} with integer relevance >= 0;
- ranking: score descending, ties broken by doc id *descending* (trec_eval sorts with `strcmp(b, a)`), so two
  runs that differ only in the order their tied documents were listed score the same;
- a document is relevant when its relevance >= 1 (trec_eval's default `relevance_level`);
- Recall@k = relevant documents in the top k / all relevant documents of the query (0 when it has none);
- MRR@10 = 1 / rank of the first relevant document within the top 10, else 0 (trec_eval's `recip_rank` is not
  cut: it equals ours on a run truncated to 10);
- nDCG@10 (`ndcg_cut.10`): linear gain = the relevance value itself, discount log2(rank + 1) with ranks from 1;
  the ideal DCG ranks every judged document of the query by relevance (from the qrels, not from the run) and cuts
  it at 10 too; 0 when the query has no document with relevance > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
DEFAULT_RECALL_KS = (1, 10, 100)


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Doc ids in trec_eval order: score descending, then doc id descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def recall_at(order: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """Share of the query's relevant documents (relevance >= 1) found in the first k of `order`."""
    relevant = {d for d, r in rels.items() if r >= 1}
    if not relevant:
        return 0.0
    return sum(1 for d in order[:k] if d in relevant) / len(relevant)


def mrr_at(order: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document within the first k, else 0."""
    for rank, d in enumerate(order[:k], 1):
        if rels.get(d, 0) >= 1:
            return 1.0 / rank
    return 0.0


def ndcg_at(order: Sequence[str], rels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with linear gain (the relevance value) and a log2(rank + 1) discount; ideal ranking from the qrels."""
    dcg = sum(rels.get(d, 0) / math.log2(rank + 1) for rank, d in enumerate(order[:k], 1) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 1) for rank, r in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def query_metrics(
    scores: Mapping[str, float], rels: Mapping[str, int], recall_ks: Sequence[int] = DEFAULT_RECALL_KS
) -> dict[str, float]:
    """Every metric of one query: recall@k for each k, mrr@10, ndcg@10."""
    order = ranked(scores)
    out = {f"recall@{k}": recall_at(order, rels, k) for k in recall_ks}
    out["mrr@10"] = mrr_at(order, rels, 10)
    out["ndcg@10"] = ndcg_at(order, rels, 10)
    return out


@dataclass
class RunMetrics:
    """Mean metrics over the evaluated queries, and each query's own values."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    n: int


def evaluate_run(run: Run, qrels: Qrels, recall_ks: Sequence[int] = DEFAULT_RECALL_KS) -> RunMetrics:
    """Score a run on every query that has qrels (a query with qrels but no retrieved documents scores 0).

    Args:
        run: {query id: {doc id: score}}; queries without qrels are ignored (as trec_eval does).
        qrels: {query id: {doc id: relevance >= 0}}.
        recall_ks: the cut-offs of recall@k.
    Returns:
        RunMetrics with the means (macro-averaged over queries), the per-query values and the query count.
    """
    per_query = {q: query_metrics(run.get(q, {}), rels, recall_ks) for q, rels in qrels.items()}
    names = [f"recall@{k}" for k in recall_ks] + ["mrr@10", "ndcg@10"]
    n = len(per_query)
    mean = {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in names}
    return RunMetrics(mean=mean, per_query=per_query, n=n)
