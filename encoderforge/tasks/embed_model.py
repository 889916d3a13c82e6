"""The bi-encoder model of `finetune embed`: the encoder + a parameter-free pooling head over packed texts, run in
length groups (short queries apart from long documents), optionally reading earlier layers too (2D Matryoshka).
Shapes: S texts, N their tokens, T the longest, C hidden, L trained layers."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from encoderforge.model.attention import Attention
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import Pooling, pool
from encoderforge.model.padding import pad_packed


class EmbedHead(nn.Module):
    """Pooling only (no parameters): (S, T, C) states + mask -> (S, C) vectors. Normalisation belongs to scoring."""

    def __init__(self, pooling: Pooling = "mean"):
        super().__init__()
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return pool(hidden, mask, self.pooling)


class EmbedModel(nn.Module):
    """Encoder + EmbedHead over packed texts: forward(input_ids (N,), lengths (S,)) -> (S, C) pooled vectors.

    Args:
        encoder: the start encoder; pooling: mean or cls.
        attention_dropout: replaces the encoder's attention-probability dropout while fine-tuning (hidden dropout
            stays). On CPU any attention dropout forces the unfused attention path (benchmarks/embed_step.py measures
            the step with and without it, docs/results.md "Domain search").
    """

    def __init__(
        self,
        encoder: Encoder,
        pooling: Pooling = "mean",
        *,
        attention_dropout: float | None = None,
        layers: Sequence[int] = (),
    ):
        super().__init__()
        self.encoder = encoder.for_task_heads()
        self.head = EmbedHead(pooling)
        if attention_dropout is not None:
            for m in self.encoder.modules():
                if isinstance(m, Attention):
                    m.dropout_p = attention_dropout
        # 2D Matryoshka: the outputs of these (1-based) layers are pooled too, read by forward hooks on their blocks
        self.layers = sorted({int(x) for x in layers} - {len(self.encoder.layers)})
        self._seen: dict[int, torch.Tensor] = {}
        for i in self.layers:
            self.encoder.layers[i - 1].register_forward_hook(lambda mod, args, out, i=i: self._seen.__setitem__(i, out))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """-> (S, C) pooled last-layer vectors; with `layers`, (len(layers) + 1, S, C): those layers', then the last's."""
        depth = len(self.layers) + 1
        out = torch.empty(depth, lengths.shape[0], self.encoder.cfg.hidden_size, device=input_ids.device)
        starts = torch.cumsum(lengths, 0) - lengths  # (S,)
        for rows in length_groups(lengths):  # short queries and long documents apart: attention pads to the longest
            ids = torch.cat([input_ids[int(starts[i]) : int(starts[i] + lengths[i])] for i in rows.tolist()])
            packed = self.encoder.forward_packed(ids, lengths[rows])  # (n, C)
            states = [self._seen.pop(i) for i in self.layers] + [packed.hidden]  # each (n, C)
            for j, h in enumerate(states):
                grid = pad_packed(h, packed.layout)  # (s, T, C), (s, T)
                out = _put(out.to(h.dtype), j, rows, self.head(grid.hidden, grid.mask))
        return out[0] if depth == 1 else out


def _put(out: torch.Tensor, j: int, rows: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """out with out[j, rows] = vecs, differentiably (index_put out of place)."""
    return out.index_put((torch.tensor(j, device=out.device), rows), vecs)


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Split sequences into at most two groups by length where that cuts the padded attention cost (count x longest^2)
    by a third or more: a batch of 12-token queries and 256-token documents attends in a (S, 256) grid otherwise."""
    order = torch.argsort(lengths, stable=True)
    sl = lengths[order].tolist()
    whole = len(sl) * sl[-1] ** 2 if sl else 0
    best, cut = whole, len(sl)
    for j in range(1, len(sl)):
        cost = j * sl[j - 1] ** 2 + (len(sl) - j) * sl[-1] ** 2
        if cost < best:
            best, cut = cost, j
    if best > whole * 2 / 3:
        return [order]
    return [order[:cut], order[cut:]]


def shape_vectors(vecs: np.ndarray, *, rotation: np.ndarray | None, dims: int | None, normalize: bool) -> np.ndarray:
    """Pooled rows -> the vectors a model stands for: its rotation (if any, from `index rotate`; orthogonal, so
    full-width scores are unchanged), then the Matryoshka cut to the first `dims` values, re-normalised. The one place
    this is done: index.embedder's `Embedder.embed`, the server's /v1/embeddings and `predict` on an embed run."""
    if rotation is not None:
        vecs = np.asarray(vecs, dtype=np.float32) @ rotation
    if dims:
        vecs = np.ascontiguousarray(vecs[:, :dims])
        if normalize:
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs
