"""Our Recall@k / MRR@10 / nDCG@10 equal trec_eval's (pytrec_eval) on random graded qrels and runs with ties."""

from __future__ import annotations

import random

import pytest

from encoderforge.index.metrics import evaluate_run, ranked

pytrec_eval = pytest.importorskip("pytrec_eval")


def random_case(seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(25):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 15))
        qrels[qid] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
        retrieved = rng.sample(docs, rng.randint(0, 40))
        # scores on a coarse grid: many exact ties, which trec_eval breaks by doc id (descending)
        run[qid] = {d: float(rng.randint(0, 6)) / 2 for d in retrieved}
    return qrels, run


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_trec_eval(seed):
    qrels, run = random_case(seed)
    ours = evaluate_run(run, qrels, recall_ks=(1, 5, 10, 100))
    measures = {"ndcg_cut.10", "recall.1", "recall.5", "recall.10", "recall.100"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {q: {d: s[d] for d in ranked(s)[:10]} for q, s in run.items()}  # trec_eval's recip_rank is not cut
    ref_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    checked = 0
    for q, mine in ours.per_query.items():
        if q not in ref:  # pytrec_eval skips queries absent from the run; ours scores them 0
            assert not run.get(q) and all(v == 0 for v in mine.values())
            continue
        checked += 1
        assert mine["ndcg@10"] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-9)
        for k in (1, 5, 10, 100):
            assert mine[f"recall@{k}"] == pytest.approx(ref[q][f"recall_{k}"], abs=1e-9)
        assert mine["mrr@10"] == pytest.approx(ref_rr[q]["recip_rank"], abs=1e-9)
    assert checked >= 20


def test_ties_follow_trec_eval_order():
    # equal scores: trec_eval ranks the larger doc id first; the list order of the run must not matter
    assert ranked({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]
    qrels = {"q": {"a": 1}}
    assert evaluate_run({"q": {"a": 1.0, "c": 1.0}}, qrels).mean["mrr@10"] == 0.5


def test_graded_gain_is_linear():
    qrels = {"q": {"x": 3, "y": 1}}
    # the less relevant doc first: DCG = 1/log2(2) + 3/log2(3); ideal = 3 + 1/log2(3)
    m = evaluate_run({"q": {"y": 2.0, "x": 1.0}}, qrels).mean["ndcg@10"]
    import math

    assert m == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
