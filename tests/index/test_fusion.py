"""Re-ranker / first-stage score fusion: z-scores per query, the two ends of the weight, and its range."""

from __future__ import annotations

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.index.fusion import fuse


def test_fusion_mixes_standardised_scores():
    first, rerank = [30.0, 20.0, 10.0, 0.0], [0.1, 0.9, 0.3, 0.2]
    z = lambda x: (np.array(x) - np.mean(x)) / np.std(x)  # noqa: E731
    assert fuse(first, rerank, 0.25) == pytest.approx(0.25 * z(rerank) + 0.75 * z(first))
    assert list(np.argsort(-fuse(first, rerank, 0))) == [0, 1, 2, 3]  # the first stage's order
    assert list(fuse(first, rerank, 1)) == rerank  # the re-ranker's own scores
    assert list(fuse([1.0, 1.0], [2.0, 3.0], 0.5)) == pytest.approx([-0.5, 0.5])  # a constant side adds nothing
    for w in (-0.1, 1.01):
        with pytest.raises(EncoderforgeError, match=r"^--rerank-weight must be in \[0, 1\]"):
            fuse(first, rerank, w)


def test_choose_weight_scores_every_weight_on_dev_and_takes_the_best():
    from encoderforge.index.fusion import choose_weight
    from encoderforge.index.metrics import evaluate_run

    # q1: the first stage ranks its relevant doc last, the re-ranker first; q2: both rank it first
    cands = {
        "q1": [("a", 3.0, 0.1), ("b", 2.0, 0.2), ("c", 1.0, 0.9)],
        "q2": [("x", 3.0, 0.8), ("y", 2.0, 0.5), ("z", 1.0, 0.1)],
    }
    qrels = {"q1": {"c": 1}, "q2": {"x": 1}}
    best, curve = choose_weight(cands, qrels)
    assert [w for w, _ in curve] == pytest.approx([i / 10 for i in range(11)])
    for w, ndcg in curve:  # each point = nDCG@10 of the run fused at that weight
        run = {q: dict(zip([d for d, _, _ in c], fuse([f for _, f, _ in c], [r for _, _, r in c], w))) for q, c in cands.items()}
        assert ndcg == pytest.approx(evaluate_run(run, qrels).mean["ndcg@10"])
    assert curve[0][1] < curve[-1][1] and best == 1.0  # ties at the top go to the larger weight
    # a re-ranker that only hurts gets weight 0
    worse = {"q2": [("x", 3.0, -0.8), ("y", 2.9, -0.5), ("z", 1.0, -0.1)]}
    assert choose_weight(worse, qrels)[0] == 0.0
    with pytest.raises(EncoderforgeError, match="none of the dev queries has judgements"):
        choose_weight({"q9": cands["q1"]}, qrels)
    # a judged dev query the first stage found nothing for scores 0 at every weight, as eval-retrieval scores it
    halved = choose_weight({"q1": cands["q1"]}, {**qrels, "q3": {"d": 1}}, ["q1", "q3"])[1]
    alone = choose_weight({"q1": cands["q1"]}, qrels, ["q1"])[1]
    assert [n for _, n in halved] == pytest.approx([n / 2 for _, n in alone])
    assert choose_weight({}, {"q3": {"d": 1}}, ["q3"])[1] == [(w, 0.0) for w, _ in alone]


def test_choose_weight_keeps_the_first_stage_order_among_tied_scores():
    """A 0/1 classifier re-ranker ties its top documents: eval-retrieval keeps them in first-stage order (a stable
    sort), so the curve must too — trec_eval's doc-id tie-break would put "b" first at w = 1."""
    from encoderforge.index.fusion import choose_weight

    cands = {"q": [("a", 5.0, 1.0), ("b", 4.0, 1.0), ("c", 3.0, 0.1)]}  # first-stage order
    best, curve = choose_weight(cands, {"q": {"a": 1}})
    assert all(n == pytest.approx(1.0) for _, n in curve)  # "a" ranks first at every weight
    assert best == 1.0
    # hand-computed: the relevant "c" (first stage 3rd) rises to 1st once the re-ranker's weight is large enough
    cands = {"q": [("a", 3.0, 0.0), ("b", 2.0, 0.0), ("c", 1.0, 1.0)]}
    best, curve = choose_weight(cands, {"q": {"c": 1}})
    got = dict(curve)
    assert got[0.0] == pytest.approx(0.5) and got[1.0] == pytest.approx(1.0)  # 1 / log2(4) at rank 3, 1 at rank 1
    assert best == 1.0
