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

from encoderforge.model.heads import SequenceClassifier
from encoderforge.tasks import LossSum
from encoderforge.tasks.classification import (
    SequenceModel,
    document_logits,
    f1_from_counts,
)
from encoderforge.tasks.sequences import (
    Encoded,
    SeqBatch,
    encode_texts,
    eval_batches,
    train_step_batches,
)
from encoderforge.tasks.spec import TaskSpec

GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def multilabel_metrics(y: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, object]:
    """(D, L) 0/1 gold and predictions -> micro/macro F1 (macro over labels present in gold or predictions),
    per-label F1 and exact-match accuracy."""
    tp = (y * pred).sum(0).astype(float)
    fp = ((1 - y) * pred).sum(0).astype(float)
    fn = (y * (1 - pred)).sum(0).astype(float)
    f1 = f1_from_counts(tp, fp, fn)
    present = (tp + fp + fn) > 0
    micro = f1_from_counts(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0]
    return {"micro_f1": float(micro), "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "exact_match": float((y == pred).all(1).mean()) if len(y) else 0.0,
            "per_label_f1": {lab: round(float(f1[i]), 4) for i, lab in enumerate(labels) if present[i]}}


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

    def __init__(self, tokenizer: Tokenizer, labels: Sequence[str], train: Sequence, dev: Sequence, *, max_length: int = 128,
                 batch_rows: int = 32, micro_rows: int = 0, max_chunks: int = 1, stride: int = 64, seed: int = 0,
                 rank: int = 0, world: int = 1):
        self.tok, self.labels = tokenizer, list(labels)
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.max_length, self.max_chunks, self.stride = max_length, max_chunks, stride
        self.batch_rows, self.micro_rows, self.seed, self.rank, self.world = batch_rows, micro_rows, seed, rank, world
        self.thresholds = np.full(len(self.labels), 0.5)
        self.train_enc, self.train_y = self.encode(train)
        self.dev_enc, self.dev_y = self.encode(dev)

    def encode(self, rows: Sequence) -> tuple[Encoded, torch.Tensor]:
        enc = encode_texts(self.tok, [r[0] for r in rows], self.max_length, max_chunks=self.max_chunks, stride=self.stride)
        y = torch.zeros(len(rows), len(self.labels))  # (D, L) multi-hot
        for d, (_, labs) in enumerate(rows):
            y[d, [self.index[lab] for lab in labs]] = 1.0
        return enc, y

    def train_batches(self, start_step: int) -> Iterator[list[SeqBatch]]:
        return train_step_batches(self.train_enc, self.train_y, self.batch_rows, self.micro_rows, self.seed, start_step,
                                  rank=self.rank, world=self.world)

    def eval_batches(self) -> Iterator[SeqBatch]:
        return eval_batches(self.dev_enc, self.dev_y, self.batch_rows, rank=self.rank, world=self.world)

    def loss(self, model: nn.Module, batch: SeqBatch) -> LossSum:
        logits = model(batch).float()  # (D, L)
        # summed over labels and documents, normalised per document: every label of a document counts
        total = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="sum")
        pred, y = (logits > 0).float(), batch.targets
        stats = {"exact": float((pred == y).all(1).sum()), "tp": float((pred * y).sum()),
                 "fp": float((pred * (1 - y)).sum()), "fn": float(((1 - pred) * y).sum())}
        for name, v in (("tp", (pred * y).sum(0)), ("fp", (pred * (1 - y)).sum(0)), ("fn", ((1 - pred) * y).sum(0))):
            stats.update({f"{name}{i}": float(x) for i, x in enumerate(v.tolist()) if x})
        return LossSum(total=total, count=batch.num_docs, tokens=int(batch.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        L = len(self.labels)
        tp, fp, fn = (np.array([sums.get(f"{k}{i}", 0.0) for i in range(L)]) for k in ("tp", "fp", "fn"))
        f1 = f1_from_counts(tp, fp, fn)
        present = (tp + fp + fn) > 0
        micro = f1_from_counts(np.array([sums.get("tp", 0.0)]), np.array([sums.get("fp", 0.0)]), np.array([sums.get("fn", 0.0)]))[0]
        return {"loss": sums["loss"] / sums["count"], "micro_f1": float(micro),
                "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
                "exact_match": sums.get("exact", 0.0) / sums["count"]}

    @torch.no_grad()
    def predict_probs(self, model: nn.Module, enc: Encoded) -> np.ndarray:
        """(D, L) sigmoid probabilities of every document of `enc`, in order."""
        model.eval()
        dummy = torch.zeros(enc.num_docs, len(self.labels))
        device = next(model.parameters()).device
        out = [torch.sigmoid(model(b.to(device)).float()).cpu() for b in eval_batches(enc, dummy, self.batch_rows)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)), np.float32)

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
        return {**out, "micro_f1_at_0.5": at_half["micro_f1"], "macro_f1_at_0.5": at_half["macro_f1"],
                "n": len(rows), "truncated": enc.truncated}


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------

def _build_task(tok: Tokenizer, labels: list[str], train: list, dev: list, args, *, rank: int = 0, world: int = 1) -> MultiLabelTask:
    return MultiLabelTask(tok, labels, train, dev, max_length=args.max_length, batch_rows=args.batch_size,
                          micro_rows=args.micro_batch, max_chunks=args.max_chunks, stride=args.stride, seed=args.seed,
                          rank=rank, world=world)


def _load_head(cfg, meta: dict, state: dict[str, torch.Tensor]) -> SequenceClassifier:
    head = SequenceClassifier(cfg, len(meta["labels"]), pooling=meta["pooling"])
    head.load_state_dict(state)
    return head.eval()


def _predict(engine, head: nn.Module, meta: dict, texts: Sequence[str]) -> list[dict]:
    probs = torch.sigmoid(torch.from_numpy(document_logits(engine, head, meta, texts))).numpy()  # (D, L)
    labels, thr = meta["labels"], np.asarray(meta["thresholds"])
    return [{"labels": [lab for lab, p, t in zip(labels, row, thr) if p >= t],
             "scores": {lab: round(float(p), 5) for lab, p in zip(labels, row)}} for row in probs]


SPEC = TaskSpec(
    kind="multilabel", label_type="multilabel",
    build_model=lambda enc, labels, a: SequenceModel(enc, len(labels), pooling=a.pooling, chunk_pooling=a.chunk_pooling),
    build_task=_build_task, calibrate=lambda task, model, rows: task.calibrate(model, rows),
    task_json=lambda a: {"max_length": a.max_length, "pooling": a.pooling, "max_chunks": a.max_chunks,
                         "stride": a.stride, "chunk_pooling": a.chunk_pooling},
    load_head=_load_head, predict=_predict)
