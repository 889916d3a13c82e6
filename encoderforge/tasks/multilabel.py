"""Multi-label classification: encoder -> SequenceClassifier head -> one sigmoid per label (BCE).

Per-label decision thresholds are tuned on dev after training (each label's F1-maximising threshold on a grid;
rare labels are badly served by a global 0.5) and stored in task.json for prediction.
Metrics: micro-F1 (primary), macro-F1, per-label F1, exact-match accuracy (every label of a document right).
Shapes: D documents, L labels.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge.tasks import LossSum, pooled
from encoderforge.tasks.pooled import (
    DocBatches,
    count_stats,
    f1_from_counts,
    f1_report,
    macro_f1_from_sums,
)
from encoderforge.tasks.sequences import Encoded, SeqBatch
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec, batching

GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def multilabel_metrics(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, object]:
    """(D, L) 0/1 gold and predictions -> micro/macro F1 (macro over labels present in gold or predictions),
    per-label F1 and exact-match accuracy."""
    tp = (y * pred).sum(0).astype(float)
    fp = ((1 - y) * pred).sum(0).astype(float)
    fn = (y * (1 - pred)).sum(0).astype(float)
    micro = f1_from_counts(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0]
    report = f1_report(tp, fp, fn, labels)
    return {
        "micro_f1": float(micro),
        "macro_f1": report["macro_f1"],
        "exact_match": float((y == pred).all(1).mean()) if len(y) else 0.0,
        "per_label_f1": report["per_label_f1"],
    }


def tune_thresholds(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(L,) thresholds: for each label the grid value with the best dev F1 (ties -> closest to 0.5);
    labels with no dev positive keep 0.5 (nothing to tune on)."""
    out = np.full(y.shape[1], 0.5)
    order = np.argsort(np.abs(GRID - 0.5), kind="stable")  # try 0.5 first so ties keep it
    for j in range(y.shape[1]):
        if y[:, j].sum() == 0:
            continue
        best = -1.0
        for t in GRID[order]:
            p = probs[:, j] >= t
            tp = float((p & (y[:, j] == 1)).sum())
            f1 = 2 * tp / max(2 * tp + float((p & (y[:, j] == 0)).sum()) + float((~p & (y[:, j] == 1)).sum()), 1e-12)
            if f1 > best:
                best, out[j] = f1, t
    return out


class MultiLabelTask:
    """Multi-label classification for the training loop (same batching and windows as ClassificationTask).

    Args:
        tokenizer, labels: the encoder's tokenizer and the label names.
        train / dev: (texts, [labels]) lists.
        max_length, batch_rows, micro_rows, max_chunks, stride, seed, rank, world: as ClassificationTask.
    """

    primary = "micro_f1"

    def __init__(
        self,
        tokenizer: Tokenizer,
        labels: Sequence[str],
        train: Sequence,
        dev: Sequence,
        *,
        max_length: int = 128,
        batch_rows: int = 32,
        micro_rows: int = 0,
        max_chunks: int = 1,
        stride: int = 64,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.labels = list(labels)
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.docs = DocBatches(tokenizer, max_length, max_chunks, stride, batch_rows, micro_rows, seed, rank, world)
        self.thresholds = np.full(len(self.labels), 0.5)
        self.train_enc, self.train_y = self.encode(train)
        self.dev_enc, self.dev_y = self.encode(dev)

    def encode(self, rows: Rows) -> tuple[Encoded, torch.Tensor]:
        y = torch.zeros(len(rows), len(self.labels))  # (D, L) multi-hot
        for d, (_, labs) in enumerate(rows):
            y[d, [self.index[lab] for lab in labs]] = 1.0
        return self.docs.encode(rows), y

    def train_batches(self, start_step: int) -> Iterator[list[SeqBatch]]:
        return self.docs.train(self.train_enc, self.train_y, start_step)

    def eval_batches(self) -> Iterator[SeqBatch]:
        return self.docs.dev(self.dev_enc, self.dev_y)

    def loss(self, model: nn.Module, batch: SeqBatch) -> LossSum:
        logits = model(batch).float()  # (D, L)
        # summed over labels and documents, normalised per document: every label of a document counts
        total = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="sum")
        pred, y = (logits > 0).float(), batch.targets
        tp, fp, fn = (pred * y).sum(0), (pred * (1 - y)).sum(0), ((1 - pred) * y).sum(0)  # (L,) each
        stats = {
            "exact": float((pred == y).all(1).sum()),
            "tp": float(tp.sum()),
            "fp": float(fp.sum()),
            "fn": float(fn.sum()),
            **count_stats(tp, fp, fn),
        }
        return LossSum(total=total, count=batch.num_docs, tokens=int(batch.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        micro = f1_from_counts(*(np.array([sums.get(k, 0.0)]) for k in ("tp", "fp", "fn")))[0]
        return {
            "loss": sums["loss"] / sums["count"],
            "micro_f1": float(micro),
            "macro_f1": macro_f1_from_sums(sums, len(self.labels)),
            "exact_match": sums.get("exact", 0.0) / sums["count"],
        }

    def predict_probs(self, model: nn.Module, enc: Encoded) -> np.ndarray:
        """(D, L) sigmoid probabilities of every document of `enc`, in order."""
        return torch.sigmoid(self.docs.outputs(model, enc, len(self.labels))).numpy()

    def calibrate(self, model: nn.Module, rows: Sequence) -> dict:
        """Tune per-label thresholds on dev rows; returns the task.json fields."""
        enc, y = self.encode(rows)
        self.thresholds = tune_thresholds(y.numpy().astype(int), self.predict_probs(model, enc))
        return {"thresholds": [float(t) for t in self.thresholds]}

    def evaluate(self, model: nn.Module, rows: Sequence) -> dict[str, object]:
        """Full metrics on labelled rows with the current (tuned) thresholds, and at 0.5 for reference."""
        enc, y = self.encode(rows)
        probs = self.predict_probs(model, enc)
        gold = y.numpy().astype(int)
        at_half = multilabel_metrics(gold, (probs >= 0.5).astype(int), self.labels)
        out = multilabel_metrics(gold, (probs >= self.thresholds).astype(int), self.labels)
        return {
            **out,
            "micro_f1_at_0.5": at_half["micro_f1"],
            "macro_f1_at_0.5": at_half["macro_f1"],
            "n": len(rows),
            "truncated": enc.truncated,
        }


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> MultiLabelTask:
    return MultiLabelTask(
        tok, labels, train, dev, max_chunks=args.finetune.max_chunks, stride=args.finetune.stride, **batching(args, rank, world)
    )


def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    probs = torch.sigmoid(torch.from_numpy(pooled.document_logits(engine, head, meta, texts))).numpy()  # (D, L)
    labels, thr = meta["labels"], np.asarray(meta["thresholds"])
    return [
        {
            "labels": [lab for lab, p, t in zip(labels, row, thr) if p >= t],
            "scores": {lab: round(float(p), 5) for lab, p in zip(labels, row)},
        }
        for row in probs
    ]


SPEC = TaskSpec(
    kind="multilabel",
    label_type="multilabel",
    primary=MultiLabelTask.primary,
    build_model=lambda enc, labels, a: pooled.build_model(enc, len(labels), a),
    build_task=_build_task,
    task_json=pooled.task_json,
    build_head=lambda cfg, meta: pooled.build_head(cfg, len(meta["labels"]), meta),
    predict=_predict,
    calibrate=lambda task, model, rows: task.calibrate(model, rows),
)
