"""Regression on one text or a sentence pair (STS-style scores, sentiment valence): encoder -> pooled head with one
output -> mean squared error; Pearson (primary) and Spearman correlations.

Pairs are one window `[CLS] a [SEP] b [SEP]` (tasks.sequences.encode_texts) with every token type 0: the [SEP]
marks the boundary (as in RoBERTa), so the padding-free inference Engine, which serves single segments, predicts
exactly what was trained. Pair *classification* is the classify task with two --text-field columns.
Pearson is summable over batches (sums of x, y, xy, x^2, y^2), so the loop's dev evaluation is exact; Spearman needs
ranks and is computed in the final evaluation (scipy, from the `eval` extra, imported there only).
Shapes: D documents (texts or pairs), S windows.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import require
from encoderforge.tasks import LossSum, pooled
from encoderforge.tasks.pooled import DocBatches
from encoderforge.tasks.sequences import Encoded, SeqBatch
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs, TaskSpec, batching


def pearson_from_sums(n: float, sx: float, sy: float, sxy: float, sxx: float, syy: float) -> float:
    """Pearson r from running sums (0 when either side is constant)."""
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0


def correlations(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations of (D,) predictions with (D,) gold values (scipy)."""
    stats = require("scipy.stats", "eval")  # optional: imported where used
    return {"pearson": float(stats.pearsonr(pred, gold)[0]), "spearman": float(stats.spearmanr(pred, gold)[0])}


class RegressionTask:
    """Regression for the training loop. Targets are standardised with the training mean/std (the head then starts
    near the right scale); predictions are mapped back.

    Args:
        tokenizer, train / dev ((texts, float) lists), max_length, batch_rows, micro_rows, max_chunks, stride, seed,
        rank, world: as ClassificationTask.
    """

    primary = "pearson"

    def __init__(
        self,
        tokenizer: Tokenizer,
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
        mean: float | None = None,
        std: float | None = None,
    ):
        self.docs = DocBatches(tokenizer, max_length, max_chunks, stride, batch_rows, micro_rows, seed, rank, world)
        ys = np.array([float(r[1]) for r in train])
        self.mean = float(ys.mean()) if mean is None else mean
        self.std = float(ys.std() or 1.0) if std is None else std
        self.train_enc, self.train_y = self.encode(train)
        self.dev_enc, self.dev_y = self.encode(dev)

    def encode(self, rows: Rows) -> tuple[Encoded, torch.Tensor]:
        y = torch.tensor([(float(r[1]) - self.mean) / self.std for r in rows], dtype=torch.float32)
        return self.docs.encode(rows), y

    def train_batches(self, start_step: int) -> Iterator[list[SeqBatch]]:
        return self.docs.train(self.train_enc, self.train_y, start_step)

    def eval_batches(self) -> Iterator[SeqBatch]:
        return self.docs.dev(self.dev_enc, self.dev_y)

    def loss(self, model: nn.Module, batch: SeqBatch) -> LossSum:
        pred = model(batch).float()[:, 0]  # (D,) standardised
        y = batch.targets
        total = F.mse_loss(pred, y, reduction="sum")
        p, t = pred.detach().double() * self.std + self.mean, y.double() * self.std + self.mean  # original scale
        stats = {
            "sx": float(p.sum()),
            "sy": float(t.sum()),
            "sxy": float((p * t).sum()),
            "sxx": float((p * p).sum()),
            "syy": float((t * t).sum()),
            "se": float(((p - t) ** 2).sum()),
        }
        return LossSum(total=total, count=batch.num_docs, tokens=int(batch.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums["count"]
        r = pearson_from_sums(n, sums["sx"], sums["sy"], sums["sxy"], sums["sxx"], sums["syy"])
        return {"loss": sums["loss"] / n, "mse": sums["se"] / n, "pearson": r}

    def predict_values(self, model: nn.Module, enc: Encoded) -> np.ndarray:
        """(D,) predictions on the original scale for every document of `enc`, in order."""
        return self.docs.outputs(model, enc, 1)[:, 0].numpy() * self.std + self.mean

    def evaluate(self, model: nn.Module, rows: Sequence) -> dict[str, object]:
        enc, _ = self.encode(rows)
        pred, gold = self.predict_values(model, enc), np.array([float(r[1]) for r in rows])
        return {**correlations(pred, gold), "mse": float(((pred - gold) ** 2).mean()), "n": len(rows), "truncated": enc.truncated}


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------


def _build_task(
    tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
) -> RegressionTask:
    return RegressionTask(
        tok, train, dev, max_chunks=args.finetune.max_chunks, stride=args.finetune.stride, **batching(args, rank, world)
    )


def _predict(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> list[dict]:
    """One text per line; a pair as `text a<TAB>text b`."""
    values = pooled.document_logits(engine, head, meta, texts)[:, 0] * meta["std"] + meta["mean"]
    return [{"value": round(float(v), 5)} for v in values]


SPEC = TaskSpec(
    kind="regress",
    label_type="float",
    primary=RegressionTask.primary,
    build_model=lambda enc, labels, a: pooled.build_model(enc, 1, a),
    build_task=_build_task,
    task_json=pooled.task_json,
    build_head=lambda cfg, meta: pooled.build_head(cfg, 1, meta),
    predict=_predict,
    calibrate=lambda task, model, rows: {"mean": task.mean, "std": task.std},
)
