"""The encoder: embeddings -> blocks -> (final norm). It owns the padding boundary: padded batches are unpadded
once on entry and padded once on exit (`forward`), and packed batches (ids back to back + lengths, what every task
and the inference engine build) go in through `forward_packed`, so no caller handles `cu_seqlens`.

Shape legend: B batch, T padded length, N total real tokens, R selected rows, C hidden size.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
from torch import nn

from encoderforge.model.attention import (
    BACKENDS,
    UNPADDED_BACKENDS,
    AttnContext,
    rope_tables,
)
from encoderforge.model.config import Backend, EncoderConfig
from encoderforge.model.layers import Block, Embeddings
from encoderforge.model.padding import (
    Packed,
    Unpadded,
    layout_from_lengths,
    pad,
    positions_unpadded,
    unpad,
    unpad_layout,
)


class Pooler(nn.Module):
    """BERT's dense + tanh over the [CLS] vector; kept so Hugging Face checkpoints round-trip exactly."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls))


class Encoder(nn.Module):
    """A BERT-style encoder.

    Example:
        >>> enc = Encoder(preset("bert-tiny"))
        >>> hidden = enc(input_ids, attention_mask)   # (B, T, C), zeros at padded positions for varlen
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, bias=cfg.bias) if cfg.norm == "pre" else None
        self.pooler = Pooler(cfg)
        self.apply(_init_weights)

    @property
    def unpadded(self) -> bool:
        return self.cfg.attention in UNPADDED_BACKENDS

    def set_attention(self, backend: str) -> "Encoder":
        """Switch every layer to another attention backend (weights unchanged); returns self."""
        # EncoderConfig.__post_init__ validates the name (the cast only tells mypy; a bad name still raises)
        self.cfg = dataclasses.replace(self.cfg, attention=cast(Backend, backend))
        for block in self.layers:
            cast(Block, block).attn.fn = BACKENDS[backend]  # self.layers holds only Blocks (__init__)
        return self

    def for_task_heads(self) -> "Encoder":
        """Make this encoder the body of a task model over packed rows: the unpadded backend (same weights) and a
        frozen BERT pooler (task heads pool for themselves, and DDP would wait for the pooler's gradients).
        Returns self."""
        if not self.unpadded:
            self.set_attention("varlen")
        self.pooler.requires_grad_(False)
        return self

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids and 0/1 mask (real tokens left-aligned) -> (B, T, C) hidden states."""
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.unpadded:
            layout = unpad_layout(attention_mask)
            types = None if token_type_ids is None else unpad(token_type_ids, layout)
            hidden = self.forward_unpadded(unpad(input_ids, layout), layout, token_type_ids=types)  # (N, C)
            return pad(hidden, layout)  # (B, T, C)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, T)
        mask = attention_mask.bool()
        rope = self._rope(positions)
        ctx = AttnContext(mask=None if bool(mask.all()) else mask, rope=rope)
        return self._run(self.embeddings(input_ids, positions, token_type_ids), ctx)

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> Packed:
        """Sequences packed back to back -> their states and layout; the entry point of every task and the engine.

        Args:
            input_ids: (N,) ids of B sequences back to back (no padding anywhere).
            lengths: (B,) length of each sequence; they sum to N.
            token_type_ids: (N,) segment ids, or None (all 0).
            rows: (R,) indices in [0, N) of the only outputs the caller reads (MLM's masked positions, each
                sequence's first token for [CLS] pooling: `padding.sequence_starts(lengths)`); the last layer then
                runs on those R tokens alone (see `forward_unpadded`).
        Returns:
            Packed: `hidden` (N, C), or (R, C) with `rows`, and the `layout` that `padding.pad_packed` needs to lay
            them (or a head's per-token outputs) out as a (B, T, ...) batch.
        Example:
            >>> out = enc.forward_packed(torch.tensor([101, 7, 102, 101, 102]), torch.tensor([3, 2]))
            >>> out.hidden.shape, pad_packed(out.hidden, out.layout).mask.shape   # (5, C), (2, 3)
        """
        if not self.unpadded:
            raise ValueError(
                f"forward_packed needs an unpadded attention backend ({sorted(UNPADDED_BACKENDS)}), this "
                f"encoder uses {self.cfg.attention!r}; call encoder.set_attention('varlen') (same weights)"
            )
        layout = layout_from_lengths(lengths)
        return Packed(self.forward_unpadded(input_ids, layout, token_type_ids=token_type_ids, rows=rows), layout)

    def forward_unpadded(
        self,
        input_ids: torch.Tensor,
        layout: Unpadded,
        *,
        token_type_ids: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) packed ids of several sequences -> (N, C); sequences never attend to each other.

        rows: (R,) token indices in [0, N) whose outputs are all the caller reads (MLM's masked positions) -> (R, C),
        the full output at those rows (exactly in eval mode; in training the last layer's dropout masks are drawn
        over the R rows, so they differ from a full forward's); the last layer then runs its queries, MLP and norms
        on R tokens instead of N (with 15% masking that skips ~85% of its attention-output and MLP GEMMs)."""
        positions = positions_unpadded(layout)  # (N,)
        ctx = AttnContext.unpadded(layout, rope=self._rope(positions))
        return self._run(self.embeddings(input_ids, positions, token_type_ids), ctx, rows)

    def _run(self, x: torch.Tensor, ctx: AttnContext, rows: torch.Tensor | None = None) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            x = block(x, ctx, rows if i == last else None)
        return x if self.final_norm is None else self.final_norm(x)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.cfg.position != "rope":
            return None
        return rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta, self.embeddings.tok.weight.dtype)


def _init_weights(m: nn.Module) -> None:
    """BERT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
