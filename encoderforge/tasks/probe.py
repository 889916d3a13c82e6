"""The linear probe of a pooled or NER task: logistic regression (scikit-learn) on the frozen encoder's features.

Two uses, one fit:
- the honest floor every classify / multilabel / NER fine-tuning run reports beside its own score ("frozen features +
  LR"), scored by the task's own `evaluate` with the probe as the model's head, so both numbers come from the same
  metric code;
- LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): start fine-tuning from the probe's head
  instead of a random one (`finetune.head_init: probe`, what `auto` means for those tasks), so the first steps do not
  push a random head's gradients into the encoder and rare labels start where the probe already has them.

The head is pool -> dropout -> linear, so a logistic regression on the pooled features IS that linear layer: the
probe's coefficients are copied into it exactly (multinomial for single-label; one binary regression per label for
multi-label). NER's head is dropout -> linear on each word's first piece (the positions NER trains and decodes on),
so its probe is one multinomial regression over the tags on those hidden states. The regularisation strength C is
chosen on dev from a small grid, by the task's primary metric (NER: entity-level F1 of the decoded dev tags).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from encoderforge import require
from encoderforge.tasks.sequences import fixed_batches

GRID = (0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths tried on dev
# NER's fits are 33k words on a WNUT fold: C=100 alone took 55 of the grid's 92 s there (one thread) and was not chosen
NER_GRID = GRID[:3]
NER_MAX_ITER = 2000  # lbfgs cap of NER's fit (33k words x 384 on a WNUT fold: 6-55 s per C on one thread, under the cap)
Score = Callable[[np.ndarray], float]  # (rows, L) dev logits -> the dev metric, higher is better


@dataclass
class Probe:
    weight: np.ndarray  # (L, C) the head's linear weight
    bias: np.ndarray  # (L,)
    c: float  # the C chosen on dev
    dev_score: float  # the task's primary metric on dev at that C (0.5 thresholds for multi-label, entity F1 for NER)
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


def first_pieces(enc: Any, idx: Sequence[int]) -> list[int]:
    """Positions, in sentences `idx` of `enc` packed back to back, of each word's first piece that truncation kept
    (the positions NER trains and decodes on), sentence by sentence in word order."""
    out, start = [], 0
    for i in idx:
        out += [start + p for p in enc.first[i] if p >= 0]
        start += len(enc.ids[i])
    return out


@torch.no_grad()
def word_features(model: Any, job: Any, enc: Any, rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(W, C) last hidden states at `first_pieces` of every sentence of `enc` (the task's own batches) and their (W,)
    tag ids: the input of NER's linear head and its targets."""
    model.eval()
    device = next(model.parameters()).device
    xs, ys = [], []
    for idx in fixed_batches(len(enc.ids), max(job.batch_rows, 32)):
        b = job._batch(enc, rows, idx).to(device)
        pos = torch.tensor(first_pieces(enc, idx), dtype=torch.long, device=device)
        xs.append(model.encoder.forward_packed(b.input_ids, b.lengths).hidden[pos].float().cpu())
        ys.append(b.labels[pos].cpu())
    return torch.cat(xs).numpy().astype(np.float64), torch.cat(ys).numpy()


def entity_f1(job: Any, logits: np.ndarray) -> float:
    """Entity-level micro F1 on the job's dev set (seqeval, as NERTask.evaluate) of (W, L) word logits in
    `word_features` order, decoded to tags by the task itself (a word cut by truncation is "O")."""
    sq = require("seqeval.metrics", "eval")
    enc = job.dev_enc
    lengths = [len(ids) for ids in enc.ids]
    pieces = np.zeros((sum(lengths), logits.shape[1]))
    pieces[first_pieces(enc, range(len(lengths)))] = logits
    pred = job._decode(pieces, lengths, enc.first)
    return float(sq.f1_score([list(r[1]) for r in job.dev_rows], pred, zero_division=0))


def fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_dev: np.ndarray, score: Score, num_labels: int,
              seed: int = 0, c: float | None = None) -> Probe:  # fmt: skip
    """Fit the probe at every C of GRID (or at `c` alone) and keep the best `score` of its dev logits.

    Args:
        kind: "classify" (y: (D,) class ids), "ner" (y: (W,) tag ids of words) or "multilabel" (y: (D, L) multi-hot).
    """
    require("sklearn", "eval")
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    best: Probe | None = None
    grid = (c,) if c else (NER_GRID if kind == "ner" else GRID)  # a fixed C, or the best on dev
    with threadpool_limits(torch.get_num_threads(), user_api="blas"):  # finetune.threads, not a thread per core
        for ci in grid:
            w, b = _fit(kind, ci, x_train, y_train, num_labels, seed)
            dev = score(x_dev @ w.T + b)
            if best is None or dev > best.dev_score:
                best = Probe(w, b, ci, dev, 0.0)
    assert best is not None
    best.fit_s = round(time.perf_counter() - t0, 2)
    return best


def _fit(kind: str, c: float, x: np.ndarray, y: np.ndarray, num_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (L, C) weights and (L,) bias of the regression at one C."""
    from sklearn.linear_model import LogisticRegression

    if kind in ("classify", "ner"):
        iters = 5000 if kind == "classify" else NER_MAX_ITER
        return _multinomial(LogisticRegression(C=c, max_iter=iters, tol=1e-6, random_state=seed), x, y, num_labels)
    w, b = np.zeros((num_labels, x.shape[1])), np.zeros(num_labels)
    for j in range(num_labels):
        col = y[:, j]
        if col.min() == col.max():  # a label always or never present in train: a constant logit
            b[j] = 10.0 if col[0] else -10.0
            continue
        lr = LogisticRegression(C=c, max_iter=5000, tol=1e-6, random_state=seed).fit(x, col)
        w[j], b[j] = lr.coef_[0], lr.intercept_[0]
    return w, b


def accuracy(y: np.ndarray) -> Score:
    return lambda logits: float((logits.argmax(1) == y).mean())


def micro_f1(y: np.ndarray) -> Score:
    """Micro-F1 of the 0.5-probability (logit > 0) decisions against (D, L) multi-hot targets."""

    def score(logits: np.ndarray) -> float:
        pred, gold = logits > 0, y == 1
        tp = float((pred & gold).sum())
        return 2 * tp / max(2 * tp + float((pred & ~gold).sum()) + float((~pred & gold).sum()), 1e-12)

    return score


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


def probe_data(kind: str, model: nn.Module, job: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, Score]:
    """The probe's train features and targets, dev features, and dev metric for the task kind: pooled features for
    classify / multilabel, first-piece word features for NER."""
    if kind == "ner":
        x_train, y_train = word_features(model, job, job.train_enc, job.train_rows)
        x_dev, _ = word_features(model, job, job.dev_enc, job.dev_rows)
        return x_train, y_train, x_dev, lambda logits: entity_f1(job, logits)
    y_dev = job.dev_y.numpy()
    score = accuracy(y_dev) if kind == "classify" else micro_f1(y_dev)
    return pooled_features(model, job, job.train_enc), job.train_y.numpy(), pooled_features(model, job, job.dev_enc), score


def probe_run(
    kind: str, model: nn.Module, job: Any, dev_rows: Sequence, test_rows: Sequence | None, seed: int, c: float | None = None
) -> tuple[Probe, dict[str, Any]]:
    """Fit the probe on the frozen model's features and score it with the task's own `evaluate` on dev (and test).
    The model's head is left holding the probe; the caller keeps or replaces it."""
    x_train, y_train, x_dev, score = probe_data(kind, model, job)
    probe = fit_probe(kind, x_train, y_train, x_dev, score, len(job.labels), seed, c)
    set_head(model, probe)
    report: dict[str, Any] = {"C": probe.c, "fit_s": probe.fit_s, "dev": job.evaluate(model, dev_rows)}
    if test_rows is not None:
        report["test"] = job.evaluate(model, test_rows)
    return probe, report
