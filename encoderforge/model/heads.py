"""Heads composed on top of the encoder. Heads see padded (B, T, C) states or pooled (B, C) vectors,
never `cu_seqlens` (padding is handled at the encoder boundary)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.config import EncoderConfig
from encoderforge.model.dropout import Dropout

Pooling = Literal["cls", "mean", "pooler"]  # pooler: [CLS] through BERT's dense + tanh (in the head)


def head_linear(in_features: int, out_features: int) -> nn.Linear:
    """A task head's output layer with BERT's initialisation (google-research/bert `initializer_range`): N(0, 0.02)
    weights and zero bias, so a fresh head's logits start near zero. Written once here instead of in every task."""
    out = nn.Linear(in_features, out_features)
    nn.init.normal_(out.weight, std=0.02)
    nn.init.zeros_(out.bias)
    return out


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: Pooling = "mean") -> torch.Tensor:
    """(B, T, C) states + (B, T) mask (None: no padding) -> (B, C): the [CLS] vector or the mean over real tokens.

    Written once; used by classification, embeddings and retrieval.
    """
    if mode in ("cls", "pooler"):
        return hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {mode!r}")
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class MLMHead(nn.Module):
    """BERT's MLM transform (dense, GELU, LayerNorm) + a decoder tied to the word embeddings.

    Call it on the hidden states of the masked positions only (sparse prediction, MosaicBERT):
    (M, C) -> (M, V).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(h, embedding_weight, self.bias)  # tied decoder: (M, V)


class SequenceClassifier(nn.Module):
    """Pool -> dropout -> linear: (B, T, C) -> (B, num_labels). With pooling "pooler" the [CLS] vector first goes
    through a trainable dense + tanh (BERT's pooler, as `BertForSequenceClassification`; SequenceModel starts it from
    the checkpoint's pooler weights)."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, *, pooling: Pooling = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias) if pooling == "pooler" else None
        self.drop = Dropout(cfg.dropout)
        self.out = head_linear(cfg.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """attention_mask may be None with "cls" or "pooler" pooling (only [CLS] is read)."""
        x = pool(hidden, attention_mask, self.pooling)
        if self.dense is not None:
            x = torch.tanh(self.dense(x))
        return self.out(self.drop(x))


class TokenClassifier(nn.Module):
    """Dropout -> linear per token: (B, T, C) -> (B, T, num_labels)."""

    def __init__(self, cfg: EncoderConfig, num_labels: int):
        super().__init__()
        self.drop = Dropout(cfg.dropout)
        self.out = head_linear(cfg.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(hidden))


@dataclass
class SpanLogits:
    start: torch.Tensor  # (B, T)
    end: torch.Tensor  # (B, T)


class SpanHead(nn.Module):
    """Extractive QA: one linear layer scoring every token as answer start and end."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.out = head_linear(cfg.hidden_size, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> SpanLogits:
        logits = self.out(hidden)  # (B, T, 2)
        logits = logits.masked_fill(~attention_mask.bool()[..., None], torch.finfo(logits.dtype).min)
        return SpanLogits(start=logits[..., 0], end=logits[..., 1])
