"""Sentence pairs and regression, end to end on data CONSTRUCTED here from real BBC articles (no STS/NLI set
ships offline): pair regression (target = word overlap of the two texts) and pair classification (does this
opening belong to this title?). These check the machinery, not a benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import pearsonr

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Schema, from_records
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.pairs import pearson_from_sums


def test_pearson_from_sums_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    r = pearson_from_sums(50, x.sum(), y.sum(), (x * y).sum(), (x * x).sum(), (y * y).sum())
    assert r == pytest.approx(pearsonr(x, y)[0])
    assert pearson_from_sums(3, 3.0, 6.0, 6.0, 3.0, 14.0) == 0.0  # constant x


def overlap_pairs(bbc_rows, n):
    """(sentence a, sentence b) from the same or different articles; target = Jaccard overlap of their word sets."""
    sents = [s.strip() for _, text in bbc_rows for s in text.split(".") if len(s.split()) > 5]
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        a, b = sents[rng.integers(len(sents))], sents[rng.integers(len(sents))]
        if rng.random() < 0.5:  # half the pairs share a lot: b is a shuffled subset of a's words
            words = a.split()
            b = " ".join(rng.permutation(words)[: max(3, len(words) // 2)])
        wa, wb = set(a.lower().split()), set(b.lower().split())
        rows.append(((a, b), len(wa & wb) / len(wa | wb)))
    return rows


def test_pair_regression_end_to_end(tiny_model, bbc_rows, tmp_path, ft_config):
    rows = overlap_pairs(bbc_rows, 80)
    schema = Schema(text_fields=("a", "b"), label_type="float")
    train, dev = from_records(rows[:60], schema, name="pairs-train"), from_records(rows[60:], schema, name="pairs-dev")
    cfg = ft_config(
        "regress",
        tiny_model,
        tmp_path / "run",
        {"data.text_field": ["a", "b"], "finetune.max_length": 64, "finetune.epochs": 4, "train.batch_rows": 8, "train.lr": 2e-3},
    )
    r = finetune(cfg, train=train, dev=dev, test=dev)
    m = r.metrics
    assert m["primary"] == "pearson" and {"pearson", "spearman", "mse"} <= set(m["test"])
    curve = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(c["eval_pearson"] for c in curve if "eval_pearson" in c)
    assert best == pytest.approx(m["dev"]["pearson"], abs=1e-4)  # the summed Pearson of the loop = scipy's
    meta = json.loads((tmp_path / "run" / "task.json").read_text())
    assert meta["kind"] == "regress" and meta["text_fields"] == 2 and meta["labels"] == []
    p = Predictor.load(tmp_path / "run")
    values = np.array([x["value"] for x in p.predict([f"{ex.texts[0]}\t{ex.texts[1]}" for ex in dev.examples])])
    gold = np.array([ex.label for ex in dev.examples])
    assert pearsonr(values, gold)[0] == pytest.approx(m["test"]["pearson"], abs=1e-3)
    with pytest.raises(EncoderforgeError, match="line 1: this model reads sentence pairs"):
        p.predict(["no tab here"])


def test_pair_classification_with_two_text_fields(tiny_model, bbc_rows, tmp_path, ft_config):
    titles = [text.split("\n")[0] for _, text in bbc_rows]
    bodies = [" ".join(text.split("\n")[1:])[:300] for _, text in bbc_rows]
    rows = [
        ((titles[i], bodies[i] if i % 2 else bodies[(i + 7) % len(bodies)]), "match" if i % 2 else "other")
        for i in range(len(titles))
    ]
    schema = Schema(text_fields=("title", "body"))
    train, dev = from_records(rows[:70], schema, name="tb-train"), from_records(rows[70:], schema, name="tb-dev")
    cfg = ft_config(
        "classify",
        tiny_model,
        tmp_path / "run",
        {
            "data.text_field": ["title", "body"],
            "finetune.max_length": 64,
            "finetune.epochs": 2,
            "train.batch_rows": 16,
            "train.lr": 2e-3,
        },
    )
    r = finetune(cfg, train=train, dev=dev, test=dev)
    preds = Predictor.load(tmp_path / "run").predict([f"{ex.texts[0]}\t{ex.texts[1]}" for ex in dev.examples])
    acc = np.mean([p["label"] == ex.label for p, ex in zip(preds, dev.examples)])
    assert acc == pytest.approx(r.metrics["test"]["accuracy"])
