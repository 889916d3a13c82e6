"""What the pooled tasks share (single-label and multi-label classification, regression on texts or pairs): the
encoder + pooled-head model, chunk pooling of long documents, their windows and batches, label-count F1, and the
prediction glue. The task files keep only their targets, loss and metrics; they import this module, never each other.

Long documents: each is cut into overlapping windows (tasks.sequences.encode_texts) and the document's logits are
the mean or max of its windows' logits, in training and prediction alike.
Shapes: D documents, S windows, N real tokens, T longest window, C hidden, L labels (outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence, cast

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import Pooling, SequenceClassifier
from encoderforge.model.padding import pad_packed, sequence_starts
from encoderforge.tasks.sequences import (
    Encoded,
    SeqBatch,
    encode_texts,
    eval_batches,
    split_pairs,
    train_step_batches,
)
from encoderforge.tasks.spec import HiddenStates, Meta, Rows, TaskArgs

ChunkPooling = Literal["mean", "max"]


def pool_chunks(logits: torch.Tensor, doc: torch.Tensor, num_docs: int, mode: ChunkPooling = "mean") -> torch.Tensor:
    """(S, L) window logits -> (D, L) document logits by mean or max over each document's windows."""
    if logits.shape[0] == num_docs:
        return logits  # one window per document (the common case): nothing to pool
    out = logits.new_zeros(num_docs, logits.shape[1])
    index = doc[:, None].expand_as(logits)  # (S, L)
    return out.scatter_reduce(0, index, logits, reduce="mean" if mode == "mean" else "amax", include_self=False)


class SequenceModel(nn.Module):
    """Encoder + a pooled head; `forward` takes a packed SeqBatch and returns (D, L) document logits.

    Example:
        >>> model = SequenceModel(Encoder(preset("bert-tiny")), num_labels=8)
        >>> logits = model(batch)   # (D, 8)
    """

    def __init__(self, encoder: Encoder, num_labels: int, *, pooling: Pooling = "mean", chunk_pooling: ChunkPooling = "mean"):
        super().__init__()
        self.encoder = encoder.for_task_heads()
        self.head = SequenceClassifier(encoder.cfg, num_labels, pooling=pooling)
        if self.head.dense is not None:  # "pooler": start from the checkpoint's pooler (the encoder's own stays frozen)
            self.head.dense.load_state_dict(encoder.pooler.dense.state_dict())
        self.chunk_pooling = chunk_pooling

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        if self.head.pooling in ("cls", "pooler"):  # only [CLS] is read: the last layer runs on those S rows alone
            cls = self.encoder.forward_packed(batch.input_ids, batch.lengths, rows=sequence_starts(batch.lengths))
            logits = self.head(cls.hidden[:, None], None)  # (S, C) -> (S, L)
        else:
            out = self.encoder.forward_packed(batch.input_ids, batch.lengths)  # (N, C)
            grid = pad_packed(out.hidden, out.layout)  # (S, T, C), (S, T)
            logits = self.head(grid.hidden, grid.mask)  # (S, L)
        return pool_chunks(logits, batch.doc, batch.num_docs, self.chunk_pooling)  # (D, L)


@dataclass
class DocBatches:
    """How a pooled task cuts documents into windows and batches them: the settings and batching classification,
    multi-label and regression share (each task holds one; no base class). Fields as ClassificationTask's args."""

    tok: Tokenizer
    max_length: int
    max_chunks: int
    stride: int
    batch_rows: int
    micro_rows: int
    seed: int
    rank: int
    world: int

    def encode(self, rows: Rows) -> Encoded:
        """The windows of each row's texts (a tuple of one text, or two for pairs)."""
        return encode_texts(self.tok, [r[0] for r in rows], self.max_length, max_chunks=self.max_chunks, stride=self.stride)

    def train(self, enc: Encoded, y: torch.Tensor, start_step: int) -> Iterator[list[SeqBatch]]:
        """This process's micro-batches for each optimizer step from `start_step` on (resume-exact)."""
        return train_step_batches(
            enc, y, self.batch_rows, self.micro_rows, self.seed, start_step, rank=self.rank, world=self.world
        )

    def dev(self, enc: Encoded, y: torch.Tensor) -> Iterator[SeqBatch]:
        """This process's share of the fixed evaluation batches."""
        return eval_batches(enc, y, self.batch_rows, rank=self.rank, world=self.world)

    @torch.no_grad()
    def outputs(self, model: nn.Module, enc: Encoded, num_outputs: int) -> torch.Tensor:
        """(D, L = num_outputs) float32 model outputs of every document of `enc`, in order, on the CPU (no labels
        needed)."""
        model.eval()
        dummy = torch.zeros(enc.num_docs)  # targets are never read by the forward
        device = next(model.parameters()).device
        out = [model(b.to(device)).float().cpu() for b in eval_batches(enc, dummy, self.batch_rows)]
        return torch.cat(out) if out else torch.zeros(0, num_outputs)


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-label F1 = 2tp / (2tp + fp + fn), 0 where the label never occurs nor is predicted."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)


def f1_report(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """(L,) counts -> macro-F1 over the labels present in gold or predictions (as sklearn) and per-label F1."""
    f1 = f1_from_counts(tp, fp, fn)
    present = (tp + fp + fn) > 0
    return {
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_label_f1": {lab: round(float(f1[i]), 4) for i, lab in enumerate(labels) if present[i]},
    }


def count_stats(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, float]:
    """(L,) per-label counts of a batch -> loop stats {"tp3": 2.0, ...} (zeros left out: the loop sums missing as 0)."""
    stats: dict[str, float] = {}
    for name, v in (("tp", tp), ("fp", fp), ("fn", fn)):
        stats.update({f"{name}{i}": float(x) for i, x in enumerate(v.tolist()) if x})
    return stats


def macro_f1_from_sums(sums: dict[str, float], num_labels: int) -> float:
    """Macro-F1 from the count_stats summed over all evaluation batches."""
    tp, fp, fn = (np.array([sums.get(f"{k}{i}", 0.0) for i in range(num_labels)]) for k in ("tp", "fp", "fn"))
    return f1_report(tp, fp, fn, [""] * num_labels)["macro_f1"]


# ---- fine-tuning and prediction glue shared by the pooled TaskSpecs -------------------------------------------


def build_model(encoder: Encoder, num_labels: int, args: TaskArgs) -> SequenceModel:
    return SequenceModel(encoder, num_labels, pooling=args.finetune.pooling, chunk_pooling=args.finetune.chunk_pooling)


def build_head(cfg: EncoderConfig, num_labels: int, meta: Meta) -> SequenceClassifier:
    return SequenceClassifier(cfg, num_labels, pooling=meta["pooling"])


def task_json(args: TaskArgs) -> Meta:
    f = args.finetune
    return {
        "max_length": f.max_length,
        "pooling": f.pooling,
        "max_chunks": f.max_chunks,
        "stride": f.stride,
        "chunk_pooling": f.chunk_pooling,
    }


@torch.inference_mode()
def document_logits(engine: HiddenStates, head: nn.Module, meta: Meta, texts: Sequence[str]) -> np.ndarray:
    """(D, L) logits of raw texts through the inference Engine's padding-free forward, windows pooled per text."""
    enc = encode_texts(
        engine.tokenizer,
        split_pairs(texts, meta.get("text_fields", 1)),
        meta["max_length"],
        max_chunks=meta["max_chunks"],
        stride=meta["stride"],
    )
    window = torch.zeros(len(enc.ids), cast(nn.Linear, head.out).out_features)  # (S, L)
    for b in engine.forward_batches(enc.ids):
        window[b.index] = head(b.hidden, b.mask).float()  # (B, L)
    return pool_chunks(window, torch.tensor(enc.doc), enc.num_docs, meta["chunk_pooling"]).numpy()
