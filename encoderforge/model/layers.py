"""Embeddings, MLP and the transformer block. Shapes: (*lead, C) where lead is (B, T) or (N,)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.attention import Attention, AttnContext
from encoderforge.model.config import EncoderConfig
from encoderforge.model.dropout import Dropout


class Embeddings(nn.Module):
    """Token + (learned absolute position) + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.pos = nn.Embedding(cfg.max_position, cfg.hidden_size) if cfg.position == "learned" else None
        self.segment = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, token_types: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok(ids)
        if self.pos is not None:
            x = x + self.pos(positions)
        if self.segment is not None:
            x = x + (self.segment(token_types) if token_types is not None else self.segment.weight[0])
        return self.drop(self.norm(x))


class MLP(nn.Module):
    """Feed-forward: GELU (BERT) or GeGLU (Shazeer 2020, used by MosaicBERT/ModernBERT)."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.activation = cfg.activation  # "gelu" (exact erf) or "geglu"
        self.gated = cfg.activation == "geglu"
        inner = cfg.ffn_of(layer)  # I: intermediate_size unless this layer's neurons were pruned
        self.fc1 = nn.Linear(cfg.hidden_size, 2 * inner if self.gated else inner, bias=cfg.bias)
        self.fc2 = nn.Linear(inner, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            return self.fc2(F.gelu(a) * g)
        return self.fc2(F.gelu(h))


class Block(nn.Module):
    """One transformer layer, post-LN (BERT) or pre-LN (GPT-2/ModernBERT style); `layer` picks its widths from a
    config with per-layer widths (`cfg.heads_of(layer)`, `cfg.ffn_of(layer)`)."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg, layer)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx: AttnContext, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(*lead, C) -> (*lead, C). With `rows` (unpadded (N, C) input), only those tokens' outputs: (R, C); every
        token still serves as key and value, but queries, MLP and norms run on the R rows alone."""
        skip = x if rows is None else x[rows]
        if self.pre:
            x = skip + self.drop(self.attn(self.norm1(x), ctx, rows))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(skip + self.drop(self.attn(x, ctx, rows)))
        return self.norm2(x + self.drop(self.mlp(x)))
