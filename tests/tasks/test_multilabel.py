"""Multi-label: metrics match sklearn, thresholds are tuned per label on dev, and a run on real licensedcode rules
writes thresholds that prediction applies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from encoderforge.data.readers import Schema, from_records
from encoderforge.recipes.finetune import finetune
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.multilabel import multilabel_metrics, tune_thresholds


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, (100, 6)), rng.integers(0, 2, (100, 6))
    y[:, 5] = 0
    p[:, 5] = 0  # a label absent from gold and predictions is left out of the macro average, as in sklearn
    m = multilabel_metrics(y, p, list("abcdef"))
    assert m["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y[:, :5], p[:, :5], average="macro"))
    assert m["exact_match"] == pytest.approx(np.mean((y == p).all(1)))
    assert "f" not in m["per_label_f1"]


def test_thresholds_are_tuned_per_label():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    probs = np.array([[0.30, 0.90, 0.1], [0.35, 0.95, 0.2], [0.10, 0.92, 0.3], [0.05, 0.10, 0.4]])
    t = tune_thresholds(y, probs)
    assert 0.10 < t[0] <= 0.30  # label 0's positives score 0.30-0.35: 0.5 would miss both
    assert 0.92 < t[1] <= 0.95 or t[1] <= 0.90  # any threshold separating or keeping both positives
    assert t[2] == 0.5  # no dev positive: nothing to tune
    pred = (probs >= t).astype(int)
    assert f1_score(y[:, 0], pred[:, 0]) == 1.0


def test_finetune_on_license_rules(tiny_model, license_rule_rows, tmp_path, ft_config):
    rows = license_rule_rows
    assert sum(len(labels) > 1 for _, labels in rows) >= 15  # really multi-label
    schema = Schema(label_type="multilabel")
    train, dev = from_records(rows[::2], schema, name="rules-train"), from_records(rows[1::2], schema, name="rules-dev")
    cfg = ft_config(
        "multilabel",
        tiny_model,
        tmp_path / "run",
        {"finetune.max_length": 64, "finetune.epochs": 6, "train.batch_rows": 8, "train.lr": 2e-3},
    )
    r = finetune(cfg, train=train, dev=dev, test=dev)
    m = r.metrics
    assert m["primary"] == "micro_f1" and {"micro_f1", "macro_f1", "exact_match", "per_label_f1"} <= set(m["dev"])
    # each label's threshold maximises that label's dev F1, so macro-F1 on dev can only improve over 0.5
    # (micro-F1 may not: lower thresholds on rare labels add false positives that micro counts in bulk)
    assert m["dev"]["macro_f1"] >= m["dev"]["macro_f1_at_0.5"]
    assert m["dev"]["micro_f1"] > 0.4, m["dev"]
    meta = json.loads((tmp_path / "run" / "task.json").read_text())
    assert meta["labels"] == ["apache-2.0", "bsd-new", "gpl-2.0", "lgpl-2.1", "mit"] and len(meta["thresholds"]) == 5
    preds = Predictor.load(tmp_path / "run").predict([ex.texts[0] for ex in dev.examples])
    for p in preds:  # a label is predicted exactly when its probability reaches its tuned threshold
        assert p["labels"] == [lab for lab, t in zip(meta["labels"], meta["thresholds"]) if p["scores"][lab] >= t - 1e-4]
    gold = np.array([[lab in ex.label for lab in meta["labels"]] for ex in dev.examples], dtype=int)
    pred = np.array([[lab in p["labels"] for lab in meta["labels"]] for p in preds], dtype=int)
    assert f1_score(gold, pred, average="micro") == pytest.approx(m["test"]["micro_f1"], abs=0.02)
