"""Regression on one text or a sentence pair (STS-style scores, sentiment valence): encoder -> pooled head with one
output -> mean squared error; Pearson (primary) and Spearman correlations.

Pairs are one window `[CLS] a [SEP] b [SEP]` (tasks.sequences.encode_texts) with every token type 0: the [SEP]
marks the boundary (as in RoBERTa), so the padding-free inference Engine, which serves single segments, predicts
exactly what was trained. Pair *classification* is the classify task with two --text-field columns.
Pearson is summable over batches (sums of x, y, xy, x^2, y^2), so the loop's dev evaluation is exact; Spearman needs
ranks and is computed in the final evaluation.
Shapes: D documents (texts or pairs), S windows.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from tokenizers import Tokenizer
from torch import nn

from encoderforge.model.heads import SequenceClassifier
from encoderforge.tasks import LossSum
from encoderforge.tasks.classification import SequenceModel, document_logits
from encoderforge.tasks.sequences import (
    Encoded,
    SeqBatch,
    encode_texts,
    eval_batches,
    train_step_batches,
)
from encoderforge.tasks.spec import TaskSpec


def pearson_from_sums(n: float, sx: float, sy: float, sxy: float, sxx: float, syy: float) -> float:
    """Pearson r from running sums (0 when either side is constant)."""
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0


class RegressionTask:
    """Regression for the training loop. Targets are standardised with the training mean/std (the head then starts
    near the right scale); predictions are mapped back.

    Args:
        tokenizer, train / dev ((texts, float) lists), max_length, batch_rows, micro_rows, max_chunks, stride, seed,
        rank, world: as ClassificationTask.
    """

    primary = "pearson"

    def __init__(self, tokenizer: Tokenizer, train: Sequence, dev: Sequence, *, max_length: int = 128, batch_rows: int = 32,
                 micro_rows: int = 0, max_chunks: int = 1, stride: int = 64, seed: int = 0, rank: int = 0, world: int = 1,
                 mean: float | None = None, std: float | None = None):
        self.tok, self.max_length, self.max_chunks, self.stride = tokenizer, max_length, max_chunks, stride
        self.batch_rows, self.micro_rows, self.seed, self.rank, self.world = batch_rows, micro_rows, seed, rank, world
        ys = np.array([float(r[1]) for r in train])
        self.mean = float(ys.mean()) if mean is None else mean
        self.std = float(ys.std() or 1.0) if std is None else std
        self.train_enc, self.train_y = self.encode(train)
        self.dev_enc, self.dev_y = self.encode(dev)

    def encode(self, rows: Sequence) -> tuple[Encoded, torch.Tensor]:
        enc = encode_texts(self.tok, [r[0] for r in rows], self.max_length, max_chunks=self.max_chunks,
                           stride=self.stride)
        return enc, torch.tensor([(float(r[1]) - self.mean) / self.std for r in rows], dtype=torch.float32)

    def train_batches(self, start_step: int) -> Iterator[list[SeqBatch]]:
        return train_step_batches(self.train_enc, self.train_y, self.batch_rows, self.micro_rows, self.seed, start_step,
                                  rank=self.rank, world=self.world)

    def eval_batches(self) -> Iterator[SeqBatch]:
        return eval_batches(self.dev_enc, self.dev_y, self.batch_rows, rank=self.rank, world=self.world)

    def loss(self, model: nn.Module, batch: SeqBatch) -> LossSum:
        pred = model(batch).float()[:, 0]  # (D,) standardised
        y = batch.targets
        total = F.mse_loss(pred, y, reduction="sum")
        p, t = pred.detach().double() * self.std + self.mean, y.double() * self.std + self.mean  # original scale
        stats = {"sx": float(p.sum()), "sy": float(t.sum()), "sxy": float((p * t).sum()), "sxx": float((p * p).sum()),
                 "syy": float((t * t).sum()), "se": float(((p - t) ** 2).sum())}
        return LossSum(total=total, count=batch.num_docs, tokens=int(batch.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums["count"]
        r = pearson_from_sums(n, sums["sx"], sums["sy"], sums["sxy"], sums["sxx"], sums["syy"])
        return {"loss": sums["loss"] / n, "mse": sums["se"] / n, "pearson": r}

    @torch.no_grad()
    def predict_values(self, model: nn.Module, enc: Encoded) -> np.ndarray:
        model.eval()
        device = next(model.parameters()).device
        dummy = torch.zeros(enc.num_docs)
        out = [model(b.to(device)).float()[:, 0].cpu() for b in eval_batches(enc, dummy, self.batch_rows)]
        return (torch.cat(out).numpy() if out else np.zeros(0, np.float32)) * self.std + self.mean

    def evaluate(self, model: nn.Module, rows: Sequence) -> dict[str, object]:
        enc, _ = self.encode(rows)
        pred, gold = self.predict_values(model, enc), np.array([float(r[1]) for r in rows])
        return {"pearson": float(pearsonr(pred, gold)[0]), "spearman": float(spearmanr(pred, gold)[0]),
                "mse": float(((pred - gold) ** 2).mean()), "n": len(rows), "truncated": enc.truncated}


# ---- fine-tuning and prediction glue ----------------------------------------------------------------------------

def _build_task(tok: Tokenizer, labels: list[str], train: list, dev: list, args, *, rank: int = 0, world: int = 1) -> RegressionTask:
    return RegressionTask(tok, train, dev, max_length=args.max_length, batch_rows=args.batch_size, micro_rows=args.micro_batch,
                          max_chunks=args.max_chunks, stride=args.stride, seed=args.seed, rank=rank, world=world)


def _load_head(cfg, meta: dict, state: dict[str, torch.Tensor]) -> SequenceClassifier:
    head = SequenceClassifier(cfg, 1, pooling=meta["pooling"])
    head.load_state_dict(state)
    return head.eval()


def _predict(engine, head: nn.Module, meta: dict, texts: Sequence[str]) -> list[dict]:
    """One text per line; a pair as `text a<TAB>text b`."""
    values = document_logits(engine, head, {**meta, "labels": ["value"]}, texts)[:, 0] * meta["std"] + meta["mean"]
    return [{"value": round(float(v), 5)} for v in values]


SPEC = TaskSpec(
    kind="regress", label_type="float",
    build_model=lambda enc, labels, a: SequenceModel(enc, 1, pooling=a.pooling, chunk_pooling=a.chunk_pooling),
    build_task=_build_task, calibrate=lambda task, model, rows: {"mean": task.mean, "std": task.std},
    task_json=lambda a: {"max_length": a.max_length, "pooling": a.pooling, "max_chunks": a.max_chunks,
                         "stride": a.stride, "chunk_pooling": a.chunk_pooling},
    load_head=_load_head, predict=_predict)
