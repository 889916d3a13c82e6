"""Single-label sequence classification: encoder -> SequenceClassifier head -> cross-entropy; accuracy + macro-F1.

Long documents: each is cut into overlapping windows (tasks.sequences.encode_texts) and the document's logits are
the mean or max of its windows' logits, in training and prediction alike.
Shapes: D documents, S windows, N real tokens, T longest window, C hidden, L labels.
"""

from __future__ import annotations

from typing import Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import Pooling, SequenceClassifier
from encoderforge.model.padding import layout_from_lengths, pad
from encoderforge.tasks import LossSum
from encoderforge.tasks.sequences import (
    ChunkPooling,
    Encoded,
    SeqBatch,
    encode_texts,
    eval_batches,
    pool_chunks,
    train_step_batches,
)
from encoderforge.tasks.spec import TaskSpec


class SequenceModel(nn.Module):
    """Encoder + a pooled head; `forward` takes a packed SeqBatch and returns (D, L) document logits.

    Example:
        >>> model = SequenceModel(Encoder(preset("bert-tiny")), num_labels=8)
        >>> logits = model(batch)   # (D, 8)
    """

    def __init__(self, encoder: Encoder, num_labels: int, *, pooling: Pooling = "mean", chunk_pooling: ChunkPooling = "mean"):
        super().__init__()
        if encoder.cfg.attention != "varlen":  # packed windows need the unpadded backend (same weights)
            encoder.set_attention("varlen")
        encoder.pooler.requires_grad_(False)  # the head pools itself; BERT's pooler gets no gradient
        self.encoder = encoder
        self.head = SequenceClassifier(encoder.cfg, num_labels, pooling=pooling)
        nn.init.normal_(self.head.out.weight, std=0.02)
        nn.init.zeros_(self.head.out.bias)
        self.chunk_pooling = chunk_pooling

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        layout = layout_from_lengths(batch.lengths)
        if self.head.pooling == "cls":  # only [CLS] is read: the last layer runs on those S rows alone
            cls = self.encoder.forward_unpadded(batch.input_ids, layout, rows=layout.cu_seqlens[:-1].long())  # (S, C)
            logits = self.head(cls[:, None], None)  # (S, L)
        else:
            hidden = self.encoder.forward_unpadded(batch.input_ids, layout)  # (N, C)
            mask = torch.arange(layout.seqlen, device=hidden.device)[None, :] < batch.lengths[:, None]  # (S, T)
            logits = self.head(pad(hidden, layout), mask)  # (S, L)
        return pool_chunks(logits, batch.doc, batch.num_docs, self.chunk_pooling)  # (D, L)


def class_weights(labels: Sequence[int], num_labels: int) -> torch.Tensor:
    """'balanced' weights n / (L * count_c) (sklearn's definition); unseen classes get weight 1."""
    counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_labels * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-label F1 = 2tp / (2tp + fp + fn), 0 where the label never occurs nor is predicted."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, object]:
    """Accuracy, macro-F1 (over labels present in gold or predictions, as sklearn) and per-label F1."""
    L = len(labels)
    tp = np.bincount(y_true[y_true == y_pred], minlength=L).astype(float)
    fp = np.bincount(y_pred, minlength=L) - tp
    fn = np.bincount(y_true, minlength=L) - tp
    f1 = f1_from_counts(tp, fp, fn)
    present = (tp + fp + fn) > 0
    return {"accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "per_label_f1": {lab: round(float(f1[i]), 4) for i, lab in enumerate(labels) if present[i]}}


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

    def __init__(self, tokenizer: Tokenizer, labels: Sequence[str], train: Sequence[tuple[Sequence[str], str]],
                 dev: Sequence[tuple[Sequence[str], str]], *, max_length: int = 128, batch_rows: int = 32,
                 micro_rows: int = 0, max_chunks: int = 1, stride: int = 64,
                 class_weight: Literal["none", "balanced"] = "none", seed: int = 0, rank: int = 0, world: int = 1):
        self.tok, self.labels = tokenizer, list(labels)
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.max_length, self.max_chunks, self.stride = max_length, max_chunks, stride
        self.batch_rows, self.micro_rows, self.seed, self.rank, self.world = batch_rows, micro_rows, seed, rank, world
        self.train_enc, self.train_y = self.encode(train)
        self.dev_enc, self.dev_y = self.encode(dev)
        self.weight = class_weights(self.train_y.tolist(), len(self.labels)) if class_weight == "balanced" else None

    def encode(self, rows: Sequence[tuple[Sequence[str], str]]) -> tuple[Encoded, torch.Tensor]:
        enc = encode_texts(self.tok, [r[0] for r in rows], self.max_length, max_chunks=self.max_chunks, stride=self.stride)
        return enc, torch.tensor([self.index[r[1]] for r in rows], dtype=torch.long)

    def train_batches(self, start_step: int) -> Iterator[list[SeqBatch]]:
        return train_step_batches(self.train_enc, self.train_y, self.batch_rows, self.micro_rows, self.seed, start_step,
                                  rank=self.rank, world=self.world)

    def eval_batches(self) -> Iterator[SeqBatch]:
        return eval_batches(self.dev_enc, self.dev_y, self.batch_rows, rank=self.rank, world=self.world)

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
        stats = {"correct": float(hit.sum())}
        for name, v in (("tp", tp), ("fp", fp), ("fn", fn)):
            stats.update({f"{name}{i}": float(x) for i, x in enumerate(v.tolist()) if x})
        return LossSum(total=total, count=batch.num_docs, tokens=int(batch.input_ids.numel()), stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        L = len(self.labels)
        tp, fp, fn = (np.array([sums.get(f"{k}{i}", 0.0) for i in range(L)]) for k in ("tp", "fp", "fn"))
        f1 = f1_from_counts(tp, fp, fn)
        present = (tp + fp + fn) > 0
        return {"loss": sums["loss"] / sums["count"], "accuracy": sums.get("correct", 0.0) / sums["count"],
                "macro_f1": float(f1[present].mean()) if present.any() else 0.0}

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, enc: Encoded) -> np.ndarray:
        """(D, L) logits of every document of `enc`, in order (no labels needed)."""
        model.eval()
        dummy = torch.zeros(enc.num_docs, dtype=torch.long)
        device = next(model.parameters()).device
        out = [model(b.to(device)).float().cpu() for b in eval_batches(enc, dummy, self.batch_rows)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)), np.float32)

    def evaluate(self, model: nn.Module, rows: Sequence[tuple[Sequence[str], str]]) -> dict[str, object]:
        """Full metrics (accuracy, macro-F1, per-label F1) on labelled rows."""
        enc, y = self.encode(rows)
        pred = self.predict_logits(model, enc).argmax(-1)
        return {**classification_metrics(y.numpy(), pred, self.labels), "n": len(rows), "truncated": enc.truncated}


# ---- fine-tuning and prediction glue (tasks.spec.TaskSpec) ------------------------------------------------------

def _build_task(tok: Tokenizer, labels: list[str], train: list, dev: list, args, *, rank: int = 0, world: int = 1) -> ClassificationTask:
    return ClassificationTask(tok, labels, train, dev, max_length=args.max_length, batch_rows=args.batch_size,
                              micro_rows=args.micro_batch, max_chunks=args.max_chunks, stride=args.stride,
                              class_weight=args.class_weight, seed=args.seed, rank=rank, world=world)


def _task_json(args) -> dict:
    return {"max_length": args.max_length, "pooling": args.pooling, "max_chunks": args.max_chunks,
            "stride": args.stride, "chunk_pooling": args.chunk_pooling}


def _load_head(cfg, meta: dict, state: dict[str, torch.Tensor]) -> SequenceClassifier:
    head = SequenceClassifier(cfg, len(meta["labels"]), pooling=meta["pooling"])
    head.load_state_dict(state)
    return head.eval()


def split_pairs(texts: Sequence[str], fields: int) -> list[tuple[str, ...]]:
    """Input lines as model inputs: the line itself, or for pair models `text a<TAB>text b`."""
    if fields == 1:
        return [(t,) for t in texts]
    out = []
    for i, t in enumerate(texts, 1):
        a, tab, b = t.partition("\t")
        if not tab or not a.strip() or not b.strip():
            raise EncoderforgeError(f"line {i}: this model reads sentence pairs; write each as `text a<TAB>text b`")
        out.append((a, b))
    return out


@torch.inference_mode()
def document_logits(engine, head: nn.Module, meta: dict, texts: Sequence[str]) -> np.ndarray:
    """(D, L) logits of raw texts through the inference Engine's padding-free forward, windows pooled per text."""
    enc = encode_texts(engine.tokenizer, split_pairs(texts, meta.get("text_fields", 1)), meta["max_length"],
                       max_chunks=meta["max_chunks"], stride=meta["stride"])
    window = torch.zeros(len(enc.ids), len(meta["labels"]))
    for idx, hidden, mask in engine._forward(enc.ids):
        window[idx] = head(hidden, mask).float()  # (B, L)
    return pool_chunks(window, torch.tensor(enc.doc), enc.num_docs, meta["chunk_pooling"]).numpy()


def _predict(engine, head: nn.Module, meta: dict, texts: Sequence[str]) -> list[dict]:
    probs = torch.softmax(torch.from_numpy(document_logits(engine, head, meta, texts)), -1).numpy()
    labels = meta["labels"]
    return [{"label": labels[int(p.argmax())], "score": round(float(p.max()), 5),
             "scores": {lab: round(float(x), 5) for lab, x in zip(labels, p)}} for p in probs]


SPEC = TaskSpec(
    kind="classify", label_type="class",
    build_model=lambda enc, labels, a: SequenceModel(enc, len(labels), pooling=a.pooling, chunk_pooling=a.chunk_pooling),
    build_task=_build_task, calibrate=lambda task, model, rows: {}, task_json=_task_json,
    load_head=_load_head, predict=_predict)
