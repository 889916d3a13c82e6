"""Scoring predicted labels with the tasks' own metric functions (the same ones fine-tuning reports), so a model
served by any engine (ours, int8, ONNX Runtime, transformers) is scored exactly as the fine-tuned run was."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from encoderforge.tasks.classification import classification_metrics
from encoderforge.tasks.multilabel import multilabel_metrics

SCORED = ("classify", "multilabel")  # the tasks `score` covers (predictions are labels)


def predicted_labels(task: str, preds: list[dict]) -> list[Any]:
    """Predictor outputs -> the labels `score` compares with gold."""
    return [p["labels"] if task == "multilabel" else p["label"] for p in preds]


def score(task: str, gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """The task's own metric functions over gold and predicted labels (classify: accuracy, macro-F1, ...;
    multilabel: micro/macro-F1, ...)."""
    index = {lab: i for i, lab in enumerate(labels)}
    if task == "multilabel":
        y, p = np.zeros((len(gold), len(labels))), np.zeros((len(gold), len(labels)))
        for i, (g, q) in enumerate(zip(gold, pred)):
            y[i, [index[x] for x in g]] = 1
            p[i, [index[x] for x in q]] = 1
        return multilabel_metrics(y, p, labels)
    return classification_metrics(np.array([index[g] for g in gold]), np.array([index[q] for q in pred]), labels)
