"""The linear probe of a pooled task: logistic regression (scikit-learn) on the frozen encoder's pooled features.

Two uses, one fit:
- the honest floor every fine-tuning run reports beside its own score ("frozen features + LR"), scored by the task's
  own `evaluate` with the probe as the model's head, so both numbers come from the same metric code;
- LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): start fine-tuning from the probe's head
  instead of a random one (`finetune.head_init: probe`), so the first steps do not push a random head's gradients
  into the encoder and rare labels start where the probe already has them.

The head is pool -> dropout -> linear, so a logistic regression on the pooled features IS that linear layer: the
probe's coefficients are copied into it exactly (multinomial for single-label; one binary regression per label for
multi-label). The regularisation strength C is chosen on dev from a small grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from encoderforge import require

GRID = (0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths tried on dev


@dataclass
class Probe:
    weight: np.ndarray  # (L, C) the head's linear weight
    bias: np.ndarray  # (L,)
    c: float  # the C chosen on dev
    dev_score: float  # the task's primary metric on dev at that C (0.5 thresholds for multi-label)
    fit_s: float


@torch.no_grad()
def pooled_features(model: Any, job: Any, enc: Any) -> np.ndarray:
    """(D, C) pooled features of every document of `enc` (the mean over its windows), from the model as it is now:
    the head's last linear layer is bypassed for the call."""
    head = model.head  # a pooled task's SequenceModel: encoder + SequenceClassifier
    out = head.out
    head.out = nn.Identity()
    try:
        return job.docs.outputs(model, enc, model.encoder.cfg.hidden_size).numpy().astype(np.float64)
    finally:
        head.out = out


def fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray, num_labels: int,
              seed: int = 0) -> Probe:  # fmt: skip
    """Fit the probe at every C of GRID and keep the best on dev (accuracy, or micro-F1 at 0.5 for multi-label).

    Args:
        kind: "classify" (y: (D,) class ids) or "multilabel" (y: (D, L) multi-hot).
    """
    require("sklearn", "eval")
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    best: Probe | None = None
    for c in GRID:
        if kind == "classify":
            w, b = _multinomial(LogisticRegression(C=c, max_iter=5000, tol=1e-6, random_state=seed), x_train, y_train, num_labels)
            score = float(((x_dev @ w.T + b).argmax(1) == y_dev).mean())
        else:
            w, b = np.zeros((num_labels, x_train.shape[1])), np.zeros(num_labels)
            for j in range(num_labels):
                col = y_train[:, j]
                if col.min() == col.max():  # a label always or never present in train: a constant logit
                    b[j] = 10.0 if col[0] else -10.0
                    continue
                lr = LogisticRegression(C=c, max_iter=5000, tol=1e-6, random_state=seed).fit(x_train, col)
                w[j], b[j] = lr.coef_[0], lr.intercept_[0]
            pred = (x_dev @ w.T + b) > 0
            tp = float((pred & (y_dev == 1)).sum())
            score = 2 * tp / max(2 * tp + float((pred & (y_dev == 0)).sum()) + float((~pred & (y_dev == 1)).sum()), 1e-12)
        if best is None or score > best.dev_score:
            best = Probe(w, b, c, score, 0.0)
    assert best is not None
    best.fit_s = round(time.perf_counter() - t0, 2)
    return best


def _multinomial(lr: Any, x: np.ndarray, y: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial fit as (L, C) weights over all labels: classes absent from train get a very low logit; two
    classes (sklearn's one-row binary form) become two opposite rows with the same softmax."""
    lr.fit(x, y)
    w, b = np.zeros((num_labels, x.shape[1])), np.full(num_labels, -1e4)
    coef, icpt = lr.coef_, lr.intercept_
    if len(lr.classes_) == 2:
        coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    for row, cls in enumerate(lr.classes_):
        w[int(cls)], b[int(cls)] = coef[row], icpt[row]
    return w, b


def set_head(model: Any, probe: Probe) -> None:
    """Copy the probe into the head's linear layer (LP-FT's start, or the probe baseline's model)."""
    out = model.head.out
    with torch.no_grad():
        out.weight.copy_(torch.as_tensor(probe.weight, dtype=out.weight.dtype))
        out.bias.copy_(torch.as_tensor(probe.bias, dtype=out.bias.dtype))


def probe_run(
    kind: str, model: nn.Module, job: Any, dev_rows: Sequence, test_rows: Sequence | None, seed: int
) -> tuple[Probe, dict[str, Any]]:
    """Fit the probe on the frozen model's features and score it with the task's own `evaluate` on dev (and test).
    The model's head is left holding the probe; the caller keeps or replaces it."""
    x_train = pooled_features(model, job, job.train_enc)
    x_dev = pooled_features(model, job, job.dev_enc)
    probe = fit_probe(kind, x_train, job.train_y.numpy(), x_dev, job.dev_y.numpy(), len(job.labels), seed)
    set_head(model, probe)
    report: dict[str, Any] = {"C": probe.c, "fit_s": probe.fit_s, "dev": job.evaluate(model, dev_rows)}
    if test_rows is not None:
        report["test"] = job.evaluate(model, test_rows)
    return probe, report
