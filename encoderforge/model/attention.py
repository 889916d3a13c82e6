"""Attention backends as a dict of functions behind one Attention module (HF ModernBERT's function table idea).

Shape legend: B batch, T padded length, N total real tokens, H heads, D head dim, C = H * D.
Padded backends take the fused qkv as (B, T, 3, H, D); the unpadded `varlen` backend takes (N, 3, H, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, cast

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.config import EncoderConfig
from encoderforge.model.dropout import dropout, keep_mask
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
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if ctx.mask is not None:
        scores = scores.masked_fill(~ctx.mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return (dropout(scores.softmax(dim=-1), dropout_p) @ v).transpose(1, 2)  # (B, T, H, D)


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """eager_attention's math with model.dropout's mask, in fewer passes over the (B, H, T, Tk) scores.
    q: (B, H, T, D); k, v: (B, H, Tk, D); mask: (B, 1, 1, Tk) bool, True = key takes part -> (B, H, T, D).

    Why by hand: torch has no fused CPU attention kernel with dropout, and its math path (what SDPA runs then)
    scales the scores, masks them and scales the dropped probabilities each in a pass of its own, forward and
    backward. Here one baddbmm computes mask bias + q k^T / sqrt(D), and the dropout scale 1 / (1 - p) multiplies
    the (B, H, T, D) output instead of the T / D times larger probabilities: a MiniLM layer's attention forward +
    backward at 32 x 40-128 tokens took 108 instead of 152 ms (benchmarks/attention_math.py, docs/results.md)."""
    B, H, T, D = q.shape
    Tk = k.shape[2]
    q3, k3, v3 = q.reshape(B * H, T, D), k.reshape(B * H, Tk, D), v.reshape(B * H, Tk, D)
    scale = 1.0 / math.sqrt(D)
    if mask is None:
        scores = torch.bmm(q3 * scale, k3.transpose(1, 2))  # (B * H, T, Tk)
    else:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
        scores = torch.baddbmm(bias.expand(B, H, 1, Tk).reshape(B * H, 1, Tk), q3, k3.transpose(1, 2), alpha=scale)
    probs = scores.softmax(dim=-1)
    if dropout_p == 0.0:
        out = torch.bmm(probs, v3)
    elif dropout_p < 1.0:
        out = torch.bmm(probs * keep_mask(probs.shape, dropout_p, probs.device), v3) * (1.0 / (1.0 - dropout_p))
    else:
        out = torch.bmm(probs * 0.0, v3)
    return out.view(B, H, T, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """SDPA over (B, H, T, D); mask (B, 1, 1, T) bool, True = key takes part.

    CPU training with attention dropout is the one exception: torch has no fused CPU kernel with dropout, so SDPA
    would run its math path (q k^T, scale, mask, softmax, Bernoulli mask, @ v); math_attention is that math with
    model.dropout's cheaper mask and fewer passes."""
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
        # without return_aux varlen_attn returns the output tensor alone (the tuple is for the logsumexp)
        return cast(torch.Tensor, varlen_attn(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen))
    grid, mask = _kv_grid(qkv, ctx)  # (B, T, 3, H, D), (B, 1, 1, T) or None
    B, T, _, H, D = grid.shape
    q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
    out = attend(q, k, v, mask, dropout_p)  # (B, H, T, D)
    out = out.transpose(1, 2).reshape(B * T, H, D)
    return out if mask is None else out[ctx.pad_index]  # (N, H, D)


def _kv_grid(qkv: torch.Tensor, ctx: AttnContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, 3, H, D) packed -> (B, T, 3, H, D) grid with zeros at padding, and the (B, 1, 1, T) key mask (None when
    every sequence has length T: then the packed tokens already are the grid)."""
    # callers check for the unpadded context first, and AttnContext.unpadded sets these three together
    assert ctx.pad_mask is not None and ctx.pad_index is not None and ctx.fill_index is not None
    B, T = ctx.pad_mask.shape
    N, _, H, D = qkv.shape
    if N == B * T:
        return qkv.view(B, T, 3, H, D), None
    grid = qkv.new_empty(B * T, 3, H, D)  # zero only the (few) padding rows: a full zero-fill cost ~9%
    grid.index_fill_(0, ctx.fill_index, 0.0)
    grid[ctx.pad_index] = qkv
    return grid.view(B, T, 3, H, D), ctx.pad_mask[:, None, None, :]


def rows_attention(qkv: torch.Tensor, ctx: AttnContext, rows: torch.Tensor, *, dropout_p: float) -> torch.Tensor:
    """Attention outputs at R selected tokens only: their queries against every key of their own sequence.
    qkv: (N, 3, H, D) unpadded, rows: (R,) indices into N, any order -> (R, H, D).

    What a layer needs when only some outputs are read (the last layer under sparse MLM prediction: the masked
    positions). Queries go into a (B, Rmax) grid (Rmax = most rows in one sequence; empty slots are zero queries
    whose outputs are dropped), keys and values into the (B, T) grid of varlen_attention, then `attend` (on CUDA
    too: the varlen FlashAttention call is not used for this path)."""
    if ctx.layout is None or ctx.pad_mask is None:
        raise ValueError("attention on selected rows needs the unpadded (varlen) context of forward_unpadded")
    rows = rows.long()
    grid, mask = _kv_grid(qkv, ctx)
    B, _, _, H, D = grid.shape
    seq = torch.bucketize(rows, ctx.layout.cu_seqlens[1:].to(rows.dtype), right=True)  # (R,) sequence of each row
    counts = torch.bincount(seq, minlength=B)
    order = torch.argsort(seq, stable=True)
    slot = torch.empty_like(rows)
    slot[order] = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[seq[order]]
    Rmax = int(counts.max().item()) if len(rows) else 0
    where = seq * Rmax + slot  # (R,) rows of the (B * Rmax) query grid
    q = qkv.new_zeros(B * Rmax, H, D)
    q[where] = qkv[rows, 0]
    _, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
    out = attend(q.view(B, Rmax, H, D).transpose(1, 2), k, v, mask, dropout_p)  # (B, H, Rmax, D)
    return out.transpose(1, 2).reshape(B * Rmax, H, D)[where]


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

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.num_heads, self.head_dim = cfg.heads_of(layer), cfg.head_dim
        width = self.num_heads * self.head_dim  # H * D: the hidden size C unless this layer's heads were pruned
        self.qkv = nn.Linear(cfg.hidden_size, 3 * width, bias=cfg.bias)
        self.out = nn.Linear(width, cfg.hidden_size, bias=cfg.bias)
        self.dropout_p = cfg.attention_dropout
        self.fn = BACKENDS[cfg.attention]

    def forward(self, x: torch.Tensor, ctx: AttnContext, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(*lead, C) -> (*lead, C); with `rows` (unpadded input only), the outputs at those tokens: (R, C)."""
        lead = x.shape[:-1]  # (B, T) padded or (N,) unpadded
        qkv = self.qkv(x).view(*lead, 3, self.num_heads, self.head_dim)  # (*lead, 3, H, D)
        if ctx.rope is not None:
            q, k, v = qkv.unbind(-3)
            qkv = torch.stack((apply_rope(q, *ctx.rope), apply_rope(k, *ctx.rope), v), dim=-3)
        p = self.dropout_p if self.training else 0.0
        if rows is not None:
            return self.out(rows_attention(qkv, ctx, rows, dropout_p=p).flatten(1))  # (R, C)
        out = self.fn(qkv, ctx, dropout_p=p)  # (*lead, H, D)
        return self.out(out.reshape(*lead, -1))
