"""Single-label sequence classification: encoder -> SequenceClassifier head -> cross-entropy; accuracy + macro-F1.

The model, windows of long documents and chunk pooling are tasks.pooled's, shared with multi-label and regression.
Shapes: D documents, S windows, N real tokens, C hidden, L labels.
"""

from __future__ import annotations

from typing import Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge.tasks import LossSum, pooled
from encoderforge.tasks.pooled import (
    DocBatches,
    SequenceModel,  # noqa: F401  (the model, importable where it always was)
    count_stats,
    f1_report,
    macro_f1_from_sums,
)
from encoderforge.tasks.sequences import Encoded, SeqBatch
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec, batching


def class_weights(labels: Sequence[int], num_labels: int) -> torch.Tensor:
    """'balanced' weights n / (L * count_c) (sklearn's definition); unseen classes get weight 1."""
    counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, object]:
    """Accuracy, macro-F1 (over labels present in gold or predictions, as sklearn) and per-label F1."""
    L = len(labels)
    tp = np.bincount(y_true[y_true == y_pred], minlength=L).astype(float)
    fp = np.bincount(y_pred, minlength=L) - tp
    fn = np.bincount(y_true, minlength=L) - tp
    return {"accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0, **f1_report(tp, fp, fn, labels)}


class ClassificationTask:
    """Single-label classification for the training loop.

    Args:
        tokenizer: the encoder's tokenizer.
        labels: the label names (index = class id).
        train / dev: (texts, label) lists; texts is a tuple of one text (or two for pairs).
        max_length: tokens per window including [CLS]/[SEP].
        batch_rows / micro_rows: documents per optimizer step / per forward (0 = no accumulation).
        max_chunks / stride: windows per long document and their overlap in tokens (1 = truncate).
        class_weight: "none" or "balanced" (inverse class frequency in the training set).
        seed, rank, world: shuffling and this process's share.
    """

    primary = "accuracy"

    def __init__(
        self,
        tokenizer: Tokenizer,
        labels: Sequence[str],
        train: Sequence[tuple[Sequence[str], str]],
        dev: Sequence[tuple[Sequence[str], str]],
        *,
        max_length: int = 128,
        batch_rows: int = 32,
        micro_rows: int = 0,
        max_chunks: int = 1,
        stride: int = 64,
        class_weight: Literal["none", "balanced"] = "none",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.labels = list(labels)
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.docs = DocBatches(tokenizer, max_length, max_chunks, stride, batch_rows, micro_rows, seed, rank, world)
        self.train_enc, self.train_y = self.encode(train)
        self.dev_enc, self.dev_y = self.encode(dev)
        self.weight = class_weights(self.train_y.tolist(), len(self.labels)) if class_weight == "balanced" else None

    def encode(self, rows: Sequence[tuple[Sequence[str], str]]) -> tuple[Encoded, torch.Tensor]:
        return self.docs.encode(rows), torch.tensor([self.index[r[1]] for r in rows], dtype=torch.long)

    def train_batches(self, start_step: int) -> Iterator[list[SeqBatch]]:
        return self.docs.train(self.train_enc, self.train_y, start_step)

    def eval_batches(self) -> Iterator[SeqBatch]:
        return self.docs.dev(self.dev_enc, self.dev_y)

    def loss(self, model: nn.Module, batch: SeqBatch) -> LossSum:
        logits = model(batch).float()  # (D, L)
        w = None if self.weight is None else self.weight.to(logits.device)
        total = F.cross_entropy(logits, batch.targets, weight=w, reduction="sum")
        pred = logits.argmax(-1)
        L = len(self.labels)
        hit = pred == batch.targets
        tp = torch.bincount(batch.targets[hit], minlength=L)
        fp = torch.bincount(pred, minlength=L) - tp
        fn = torch.bincount(batch.targets, minlength=L) - tp
        stats = {"correct": float(hit.sum()), **count_stats(tp, fp, fn)}
        return LossSum(total=total, count=batch.num_docs, tokens=int(batch.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {
            "loss": sums["loss"] / sums["count"],
            "accuracy": sums.get("correct", 0.0) / sums["count"],
            "macro_f1": macro_f1_from_sums(sums, len(self.labels)),
        }

    def predict_logits(self, model: nn.Module, enc: Encoded) -> np.ndarray:
        """(D, L) logits of every document of `enc`, in order (no labels needed)."""
        return self.docs.outputs(model, enc, len(self.labels)).numpy()

    def evaluate(self, model: nn.Module, rows: Sequence[tuple[Sequence[str], str]]) -> dict[str, object]:
        """Full metrics (accuracy, macro-F1, per-label F1) on labelled rows."""
        enc, y = self.encode(rows)
        pred = self.predict_logits(model, enc).argmax(-1)
        return {**classification_metrics(y.numpy(), pred, self.labels), "n": len(rows), "truncated": enc.truncated}


# ---- fine-tuning and prediction glue (tasks.spec.TaskSpec) ------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> ClassificationTask:
    f = args.finetune
    return ClassificationTask(
        tok,
        labels,
        train,
        dev,
        max_chunks=f.max_chunks,
        stride=f.stride,
        class_weight=f.class_weight,
        **batching(args, rank, world),
    )


def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    probs = torch.softmax(torch.from_numpy(pooled.document_logits(engine, head, meta, texts)), -1).numpy()
    labels = meta["labels"]
    return [
        {
            "label": labels[int(p.argmax())],
            "score": round(float(p.max()), 5),
            "scores": {lab: round(float(x), 5) for lab, x in zip(labels, p)},
        }
        for p in probs
    ]


SPEC = TaskSpec(
    kind="classify",
    label_type="class",
    primary=ClassificationTask.primary,
    build_model=lambda enc, labels, a: pooled.build_model(enc, len(labels), a),
    build_task=_build_task,
    task_json=pooled.task_json,
    build_head=lambda cfg, meta: pooled.build_head(cfg, len(meta["labels"]), meta),
    predict=_predict,
)
