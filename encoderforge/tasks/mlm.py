"""Masked language modelling: packed rows -> masked batch -> encoder -> MLM head on masked positions only.

Sparse prediction (MosaicBERT): the decoder (C x V, the largest matmul for small encoders) runs on the M masked
positions, not on all N tokens; with 15-30% masking that skips 70-85% of it.
Shapes: N packed tokens, S segments, M masked positions, C hidden, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.data.corpus import Documents
from encoderforge.data.masking import MaskingConfig, MaskVocab, mask_row
from encoderforge.data.packing import Row, iter_rows, pack, rank_slice, row_tokens
from encoderforge.model import checkpoint
from encoderforge.model.encoder import Encoder, _init_weights
from encoderforge.model.heads import MLMHead
from encoderforge.model.padding import layout_from_lengths
from encoderforge.tasks import LossSum


@dataclass
class MLMBatch:
    input_ids: torch.Tensor  # (N,) corrupted ids of all segments back to back
    lengths: torch.Tensor  # (S,) int32 segment lengths
    positions: torch.Tensor  # (M,) int64 indices into input_ids to predict
    labels: torch.Tensor  # (M,) int64 original ids

    def to(self, device: torch.device | str) -> "MLMBatch":
        return MLMBatch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.lengths, self.positions, self.labels)))


class MaskedLM(nn.Module):
    """Encoder + MLM head whose decoder is tied to the word embeddings. `forward` returns logits for the masked
    positions only: (M, V).

    Example:
        >>> model = MaskedLM(Encoder(preset("bert-tiny", vocab_size=30522)))
        >>> logits = model(batch.input_ids, batch.lengths, batch.positions)  # (M, V)
    """

    def __init__(self, encoder: Encoder, head: MLMHead | None = None):
        super().__init__()
        if encoder.cfg.attention != "varlen":  # packed rows need the unpadded backend (same weights)
            encoder.set_attention("varlen")
        encoder.pooler.requires_grad_(False)  # MLM never uses the pooler; DDP would wait for its gradients
        self.encoder = encoder
        if head is None:
            head = MLMHead(encoder.cfg)
            head.apply(_init_weights)
        self.mlm = head

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor, positions: torch.Tensor,
                return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, V) at `positions`; with return_hidden, also every token's final features (N, C).
        Without it the encoder's last layer runs on the masked positions only (Encoder.forward_unpadded `rows`)."""
        layout = layout_from_lengths(lengths)
        if not return_hidden:
            hidden = self.encoder.forward_unpadded(input_ids, layout, rows=positions)  # (M, C)
            return self.mlm(hidden, self.encoder.embeddings.tok.weight)  # (M, V)
        hidden = self.encoder.forward_unpadded(input_ids, layout)  # (N, C)
        return self.mlm(hidden[positions], self.encoder.embeddings.tok.weight), hidden

    @staticmethod
    def from_checkpoint(path: str | Path, *, require_head: bool = False) -> "MaskedLM":
        """Load our checkpoint or a Hugging Face BERT directory; reuse its MLM head if it has one, else a fresh head
        (e.g. sentence-transformers MiniLM ships none) unless `require_head` (evaluating a head needs a trained one)."""
        loaded = checkpoint.load(path)
        model = MaskedLM(loaded.encoder)
        head = {k[len("mlm."):]: v for k, v in loaded.extra.items() if k.startswith("mlm.")}
        if require_head and not head:
            raise EncoderforgeError(f"{path}: no MLM head in this checkpoint; pass the `model` directory of an "
                                    "`encoderforge pretrain` run (it saves the head beside the encoder)")
        if head:
            missing, unexpected = model.mlm.load_state_dict(head, strict=False)
            if missing or unexpected:
                raise EncoderforgeError(f"{path}: MLM head tensors do not match (missing {missing}, unexpected "
                                        f"{unexpected}); remove them to start from a fresh head")
        return model


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
    return MLMBatch(input_ids=torch.from_numpy(np.concatenate(ids)), lengths=packed.lengths,
                    positions=torch.from_numpy(np.concatenate(positions)), labels=torch.from_numpy(np.concatenate(labels)))


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

    def __init__(self, train_docs: list[Documents], eval_docs: list[Documents] | None, vocab: MaskVocab,
                 masking: MaskingConfig, *, max_len: int, batch_rows: int, micro_rows: int = 0, eval_rows: int = 64,
                 seed: int = 0, rank: int = 0, world: int = 1):
        self.train_docs, self.eval_docs, self.vocab, self.masking = train_docs, eval_docs, vocab, masking
        self.max_len, self.batch_rows, self.eval_rows, self.seed = max_len, batch_rows, eval_rows, seed
        self.rank, self.world = rank, world
        self.micro_rows = micro_rows or batch_rows // world
        if batch_rows % world or (batch_rows // world) % self.micro_rows:
            raise EncoderforgeError(f"train.batch_rows={batch_rows} must split evenly into {world} process(es) x "
                                    f"train.micro_rows={self.micro_rows}")
        self._eval: list[MLMBatch] | None = None

    def train_row_batches(self, start_step: int) -> Iterator[list[list[Row]]]:
        """Each optimizer step's rows for this process, cut into micro-batches (ELECTRA reads the same rows)."""
        stream = iter_rows(self.train_docs, self.max_len, self.seed, start=start_step * self.batch_rows)
        while True:
            rows = rank_slice([next(stream) for _ in range(self.batch_rows)], self.rank, self.world)
            yield [rows[i:i + self.micro_rows] for i in range(0, len(rows), self.micro_rows)]

    def eval_row_batches(self) -> list[list[Row]]:
        """This process's share of the first `eval_rows` held-out rows, in micro-batches: the same every time."""
        rows: list[Row] = []
        if self.eval_docs and self.eval_rows:
            for row in iter_rows(self.eval_docs, self.max_len, self.seed, use_weights=False, epochs=1):
                rows.append(row)
                if len(rows) == self.eval_rows:
                    break
        mine = rows[self.rank::self.world]
        return [mine[i:i + self.micro_rows] for i in range(0, len(mine), self.micro_rows)]

    def train_batches(self, start_step: int) -> Iterator[list[MLMBatch]]:
        for micro in self.train_row_batches(start_step):
            yield [collate(self.train_docs, rows, self.vocab, self.masking, self.seed) for rows in micro]

    def eval_batches(self) -> list[MLMBatch]:
        if self._eval is None:  # fixed rows and masks, built once: evaluations are comparable across steps
            self._eval = [collate(self.eval_docs, rows, self.vocab, self.masking, self.seed + 1)
                          for rows in self.eval_row_batches()]
        return self._eval

    def loss(self, model: nn.Module, batch: MLMBatch) -> LossSum:
        total, correct = masked_ce(model(batch.input_ids, batch.lengths, batch.positions), batch.labels)
        return LossSum(total=total, count=int(batch.labels.numel()), tokens=int(batch.input_ids.numel()),
                       stats={"correct": correct})

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / sums["count"]
        return {"mlm_loss": loss, "mlm_accuracy": sums.get("correct", 0.0) / sums["count"],
                "perplexity": float(np.exp(min(loss, 50.0)))}
