"""Attention backends as a dict of functions behind one Attention module (HF ModernBERT's function table idea).

Shape legend: B batch, T padded length, N total real tokens, H heads, D head dim, C = H * D.
Padded backends take the fused qkv as (B, T, 3, H, D); the unpadded `varlen` backend takes (N, 3, H, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.config import EncoderConfig
from encoderforge.model.dropout import dropout
from encoderforge.model.padding import Unpadded, _reindex


@dataclass(frozen=True)
class AttnContext:
    """What attention needs besides q, k, v: built once per forward by the encoder."""

    mask: torch.Tensor | None = None  # padded: (B, T) bool, True = real token; None = no padding
    layout: Unpadded | None = None  # unpadded: where the N tokens sit
    pad_index: torch.Tensor | None = None  # unpadded: (N,) rows in a (B * max_seqlen) grid
    pad_mask: torch.Tensor | None = None  # unpadded: (B, max_seqlen) bool
    fill_index: torch.Tensor | None = None  # unpadded: (B * max_seqlen - N,) grid rows that are padding
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin: token-shaped + (1, D)

    @staticmethod
    def unpadded(layout: Unpadded, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> "AttnContext":
        T = layout.max_seqlen
        idx = layout.indices if T == layout.seqlen else _reindex(layout, T)
        mask = torch.zeros(layout.batch * T, dtype=torch.bool, device=idx.device)
        mask[idx] = True
        fill = torch.nonzero(~mask).flatten()
        return AttnContext(layout=layout, pad_index=idx, pad_mask=mask.view(layout.batch, T), fill_index=fill, rope=rope)


def eager_attention(qkv: torch.Tensor, ctx: AttnContext, *, dropout_p: float) -> torch.Tensor:
    """Readable reference: softmax(q k^T / sqrt(D) + mask) v. qkv: (B, T, 3, H, D) -> (B, T, H, D)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
    mask = None if ctx.mask is None else ctx.mask[:, None, None, :]  # (B, 1, 1, T)
    return math_attention(q, k, v, mask, dropout_p).transpose(1, 2)  # (B, T, H, D)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(D), masked) with model.dropout, @ v; (B, H, T, D), mask (B, 1, 1, T) bool."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return dropout(scores.softmax(dim=-1), dropout_p) @ v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """SDPA over (B, H, T, D); mask (B, 1, 1, T) bool, True = key takes part.

    CPU training with attention dropout is the one exception: torch has no fused CPU kernel with dropout, so SDPA
    runs its math path (q k^T, softmax, Bernoulli mask, @ v); this is that path with model.dropout's cheaper mask."""
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return math_attention(q, k, v, mask, dropout_p)


def sdpa_attention(qkv: torch.Tensor, ctx: AttnContext, *, dropout_p: float) -> torch.Tensor:
    """torch's fused scaled_dot_product_attention on the padded batch. qkv: (B, T, 3, H, D) -> (B, T, H, D)."""
    mask = None if ctx.mask is None else ctx.mask[:, None, None, :]  # (B, 1, 1, T)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D), strided views: no copy
    return attend(q, k, v, mask, dropout_p).transpose(1, 2)


def varlen_attention(qkv: torch.Tensor, ctx: AttnContext, *, dropout_p: float) -> torch.Tensor:
    """Attention over unpadded tokens; sequences never attend to each other. qkv: (N, 3, H, D) -> (N, H, D).

    On CUDA with half precision this is FlashAttention's varlen kernel (torch.nn.attention.varlen).
    On CPU no varlen kernel exists, so only this step scatters qkv into a (B, max_seqlen) grid (one copy,
    skipped when all sequences have the same length) and runs SDPA; every linear layer, norm and MLP still
    runs on the N real tokens only (ByteTransformer's split: the GEMMs dominate the FLOPs of short
    sequences, and they see no padding).
    """
    assert ctx.layout is not None and ctx.pad_index is not None and ctx.pad_mask is not None
    lay = ctx.layout
    if qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = qkv.unbind(1)  # each (N, H, D)
        return varlen_attn(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen)
    B, T = ctx.pad_mask.shape
    N, _, H, D = qkv.shape
    if N == B * T:  # no padding at all: the packed tokens already are a (B, T) grid
        grid, mask = qkv.view(B, T, 3, H, D), None
    else:
        grid = qkv.new_empty(B * T, 3, H, D)  # zero only the (few) padding rows: a full zero-fill cost ~9%
        grid.index_fill_(0, ctx.fill_index, 0.0)
        grid[ctx.pad_index] = qkv
        grid, mask = grid.view(B, T, 3, H, D), ctx.pad_mask[:, None, None, :]  # mask: (B, 1, 1, T)
    q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
    out = attend(q, k, v, mask, dropout_p)  # (B, H, T, D)
    out = out.transpose(1, 2).reshape(B * T, H, D)
    return out if mask is None else out[ctx.pad_index]  # (N, H, D)


AttentionFn = Callable[..., torch.Tensor]
BACKENDS: dict[str, AttentionFn] = {"eager": eager_attention, "sdpa": sdpa_attention, "varlen": varlen_attention}
UNPADDED_BACKENDS = {"varlen"}


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for rotary embeddings (Su et al., RoFormer); positions: any shape -> (*shape, 1, D)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.to(torch.float32)[..., None] * inv  # (*, D/2)
    ang = torch.cat((ang, ang), dim=-1)[..., None, :]  # (*, 1, D)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., H, D) by the position angles (GPT-NeoX half-split convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; the backend is resolved once."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.dropout_p = cfg.attention_dropout
        self.fn = BACKENDS[cfg.attention]

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        lead = x.shape[:-1]  # (B, T) padded or (N,) unpadded
        qkv = self.qkv(x).view(*lead, 3, self.num_heads, self.head_dim)  # (*lead, 3, H, D)
        if ctx.rope is not None:
            q, k, v = qkv.unbind(-3)
            qkv = torch.stack((apply_rope(q, *ctx.rope), apply_rope(k, *ctx.rope), v), dim=-3)
        out = self.fn(qkv, ctx, dropout_p=self.dropout_p if self.training else 0.0)  # (*lead, H, D)
        return self.out(out.reshape(*lead, -1))
