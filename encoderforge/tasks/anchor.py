"""Anchored MLM for continued pretraining of a sentence-embedding model: the MLM loss plus a pull of the
encoder's output features on the *unmasked* tokens towards those of the encoder it started from.

Why: models such as all-MiniLM-L6-v2 were trained contrastively; their mean-pooled token features are what a
classifier or a search index starts from. Plain continued MLM moves those features towards token prediction and
can cost more downstream than the domain gains (docs/results-pretrain.md: a news-adapted MiniLM fine-tunes 4
points worse than the unadapted one). Masked positions are left free to learn the domain's tokens; every other
token keeps (1 - cosine) close to the frozen start's features on the same corrupted input.

The loss stays a sum with fixed per-token weights, so gradient accumulation and DDP remain exact:
    total = sum_masked CE + weight * r / (1 - r) * sum_unmasked (1 - cos(h, h_start)),   count = masked tokens
where r is the masking ratio, so total / count ~= mean CE + weight * mean cosine distance.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.encoder import Encoder
from encoderforge.tasks import LossSum
from encoderforge.tasks.masked import MLMBatch, MLMTask, masked_ce


class AnchoredMLMTask:
    """MLM (rows, masks, evaluation of `data`) plus the feature anchor to a frozen copy of the start encoder.

    Args:
        data: the MLM task (corpus, masking, batch split, seed).
        start: the encoder before continued pretraining; frozen here, never saved with the run.
        weight: anchor weight (0 = plain MLM). Measured on MiniLM-L6 + legal text, 600 steps at lr 1e-4:
            weight 10 ends at a mean cosine distance of 0.03 from the start (plain MLM: 0.43) and keeps
            ~85% of plain MLM's drop in held-out loss (docs/results-pretrain.md).
    """

    def __init__(self, data: MLMTask, start: Encoder, *, weight: float):
        self.data, self.start, self.weight = data, start.requires_grad_(False).eval(), weight
        self.ratio = data.masking.ratio

    def train_batches(self, start_step: int) -> Iterator[list[MLMBatch]]:
        return self.data.train_batches(start_step)

    def eval_batches(self) -> list[MLMBatch]:
        return self.data.eval_batches()

    def loss(self, model: nn.Module, batch: MLMBatch) -> LossSum:
        logits, hidden = model(batch.input_ids, batch.lengths, batch.positions, return_hidden=True)
        with torch.no_grad():
            ref = self.start.forward_packed(batch.input_ids, batch.lengths).hidden  # (N, C)
        keep = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        keep[batch.positions] = False
        dist = 1.0 - F.cosine_similarity(hidden[keep].float(), ref[keep].float(), dim=-1)
        ce, correct = masked_ce(logits, batch.labels)
        total = ce + self.weight * self.ratio / (1.0 - self.ratio) * dist.sum()
        return LossSum(
            total=total,
            count=int(batch.labels.numel()),
            tokens=int(batch.input_ids.numel()),
            stats={"correct": correct, "mlm_sum": ce.item(), "anchor_sum": dist.sum().item(), "anchored": float(keep.sum())},
        )

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The MLM metrics of the cross-entropy alone (comparable with plain MLM runs) and the mean cosine
        distance of the unmasked tokens' features from the start encoder's."""
        out = self.data.metrics({**sums, "loss": sums["mlm_sum"]})
        out["anchor_cos_dist"] = sums["anchor_sum"] / max(sums["anchored"], 1.0)
        return out
