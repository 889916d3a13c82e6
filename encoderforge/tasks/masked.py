"""What the masked pretraining objectives share (MLM, ELECTRA, anchored MLM; tasks/objectives.py registers them):
packed, masked batches of corpus rows, the resume-exact row stream with its fixed held-out rows, and the sparse MLM
loss. Each objective's own file imports this module, never another objective.

The MLM loss reads only the M masked positions (sparse prediction, MosaicBERT): the model's decoder (C x V, the
largest matmul for small encoders) runs on those, not on all N tokens.
Shapes: N packed tokens, S segments, M masked positions, C hidden, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig, MaskVocab, mask_row
from encoderforge.data.packing import Row, iter_rows, pack, rank_slice, row_tokens
from encoderforge.data.shards import Documents
from encoderforge.tasks import LossSum


@dataclass
class MLMBatch:
    input_ids: torch.Tensor  # (N,) corrupted ids of all segments back to back
    lengths: torch.Tensor  # (S,) int32 segment lengths
    positions: torch.Tensor  # (M,) int64 indices into input_ids to predict
    labels: torch.Tensor  # (M,) int64 original ids

    def to(self, device: torch.device | str) -> "MLMBatch":
        return MLMBatch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.lengths, self.positions, self.labels)))


def collate(docs: list[Documents], rows: list[Row], vocab: MaskVocab, masking: MaskingConfig, seed: int) -> MLMBatch:
    """Pack rows into one flat batch and mask each row with its own generator seeded by (seed, row index)."""
    ids, positions, labels, segments, offset = [], [], [], [], 0
    for row in rows:
        segs = row_tokens(docs, row, vocab.cls_id, vocab.sep_id)
        m = mask_row(np.concatenate(segs), vocab, masking, np.random.default_rng([seed, row.index]))
        ids.append(m.input_ids)
        positions.append(m.positions + offset)
        labels.append(m.labels)
        segments.extend(segs)
        offset += len(m.input_ids)
    packed = pack(segments)
    return MLMBatch(
        input_ids=torch.from_numpy(np.concatenate(ids)),
        lengths=packed.lengths,
        positions=torch.from_numpy(np.concatenate(positions)),
        labels=torch.from_numpy(np.concatenate(labels)),
    )


def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Summed cross-entropy (fp32) of the masked positions' logits (M, V), and how many argmaxes are right."""
    logits = logits.float()
    return F.cross_entropy(logits, labels, reduction="sum"), float((logits.argmax(-1) == labels).sum().item())


class MLMTask:
    """The MLM task for the training loop: deterministic packed, masked batches and the sparse MLM loss.

    Args:
        train_docs / eval_docs: memory-mapped corpora (data.corpus.load_documents); eval_docs may be None.
        vocab: special ids and the "##" table of the tokenizer the shards were made with.
        masking: ratio and strategy.
        max_len: tokens per packed row.
        batch_rows: global rows per optimizer step; micro_rows: rows per forward (0 = batch_rows / world).
        eval_rows: held-out rows per evaluation.
        seed: data order and masking seed.
        rank, world: this process's share of every global batch.
    """

    def __init__(
        self,
        train_docs: list[Documents],
        eval_docs: list[Documents] | None,
        vocab: MaskVocab,
        masking: MaskingConfig,
        *,
        max_len: int,
        batch_rows: int,
        micro_rows: int = 0,
        eval_rows: int = 64,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.train_docs, self.eval_docs, self.vocab, self.masking = train_docs, eval_docs, vocab, masking
        self.max_len, self.batch_rows, self.eval_rows, self.seed = max_len, batch_rows, eval_rows, seed
        self.rank, self.world = rank, world
        self.micro_rows = micro_rows or batch_rows // world
        if batch_rows % world or (batch_rows // world) % self.micro_rows:
            raise EncoderforgeError(
                f"train.batch_rows={batch_rows} must split evenly into {world} process(es) x train.micro_rows={self.micro_rows}"
            )
        self._eval: list[MLMBatch] | None = None

    def train_row_batches(self, start_step: int) -> Iterator[list[list[Row]]]:
        """Each optimizer step's rows for this process, cut into micro-batches (ELECTRA reads the same rows)."""
        stream = iter_rows(self.train_docs, self.max_len, self.seed, start=start_step * self.batch_rows)
        while True:
            rows = rank_slice([next(stream) for _ in range(self.batch_rows)], self.rank, self.world)
            yield [rows[i : i + self.micro_rows] for i in range(0, len(rows), self.micro_rows)]

    def eval_row_batches(self) -> list[list[Row]]:
        """This process's share of the first `eval_rows` held-out rows, in micro-batches: the same every time."""
        rows: list[Row] = []
        if self.eval_docs and self.eval_rows:
            for row in iter_rows(self.eval_docs, self.max_len, self.seed, use_weights=False, epochs=1):
                rows.append(row)
                if len(rows) == self.eval_rows:
                    break
        mine = rows[self.rank :: self.world]
        return [mine[i : i + self.micro_rows] for i in range(0, len(mine), self.micro_rows)]

    def train_batches(self, start_step: int) -> Iterator[list[MLMBatch]]:
        for micro in self.train_row_batches(start_step):
            yield [collate(self.train_docs, rows, self.vocab, self.masking, self.seed) for rows in micro]

    def eval_batches(self) -> list[MLMBatch]:
        if self._eval is None:  # fixed rows and masks, built once: evaluations are comparable across steps
            docs = self.eval_docs  # None: no eval corpus, and eval_row_batches() is empty anyway
            self._eval = (
                []
                if docs is None
                else [collate(docs, rows, self.vocab, self.masking, self.seed + 1) for rows in self.eval_row_batches()]
            )
        return self._eval

    def loss(self, model: nn.Module, batch: MLMBatch) -> LossSum:
        total, correct = masked_ce(model(batch.input_ids, batch.lengths, batch.positions), batch.labels)
        return LossSum(
            total=total, count=int(batch.labels.numel()), tokens=int(batch.input_ids.numel()), stats={"correct": correct}
        )

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / sums["count"]
        return {
            "mlm_loss": loss,
            "mlm_accuracy": sums.get("correct", 0.0) / sums["count"],
            "perplexity": float(np.exp(min(loss, 50.0))),
        }
