"""Pure unpad/pad functions used at the encoder boundary (mosaicml bert `bert_padding.py` idea).

Shapes: B batch, T padded length, N = total real tokens, C channels.
cu_seqlens: (B + 1,) int32 cumulative lengths, so sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1].
Only the encoder and this file read cu_seqlens: callers hold an `Unpadded` as an opaque layout and hand it back to
`pad_packed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Unpadded:
    """Where the real tokens of a padded (B, T) batch live once flattened."""

    indices: torch.Tensor  # (N,) int64 positions in the flattened (B * T) batch
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    max_seqlen: int
    batch: int
    seqlen: int


@dataclass(frozen=True)
class Packed:
    """What `Encoder.forward_packed` returns: states of sequences packed back to back, and where they sit."""

    hidden: torch.Tensor  # (N, C); (R, C) when the encoder was asked for `rows` only
    layout: Unpadded  # for pad_packed


@dataclass(frozen=True)
class Padded:
    """Packed states laid out as a padded batch: what heads that pool or score spans read."""

    hidden: torch.Tensor  # (B, T, ...) zeros at padded positions
    mask: torch.Tensor  # (B, T) bool, True = real token (left-aligned)


def unpad_layout(attention_mask: torch.Tensor) -> Unpadded:
    """Compute the layout of the real tokens from a (B, T) 0/1 mask (real tokens must be left-aligned)."""
    B, T = attention_mask.shape
    lengths = attention_mask.sum(dim=1, dtype=torch.int32)  # (B,)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()  # (N,)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=attention_mask.device)
    cu[1:] = torch.cumsum(lengths, dim=0)
    max_len = int(lengths.max().item()) if B else 0
    return Unpadded(indices=indices, cu_seqlens=cu, max_seqlen=max_len, batch=B, seqlen=T)


def unpad(x: torch.Tensor, layout: Unpadded) -> torch.Tensor:
    """(B, T, ...) -> (N, ...): keep only the real tokens."""
    return x.reshape(layout.batch * layout.seqlen, *x.shape[2:])[layout.indices]


def pad(x: torch.Tensor, layout: Unpadded, *, seqlen: int | None = None) -> torch.Tensor:
    """(N, ...) -> (B, T, ...) with zeros at padded positions; `seqlen` defaults to the original T."""
    T = layout.seqlen if seqlen is None else seqlen
    out = x.new_zeros(layout.batch * T, *x.shape[1:])
    idx = layout.indices if T == layout.seqlen else _reindex(layout, T)
    out[idx] = x
    return out.reshape(layout.batch, T, *x.shape[1:])


def _reindex(layout: Unpadded, T: int) -> torch.Tensor:
    """Flattened indices of the real tokens in a (B, T) grid for a different padded length T."""
    row = torch.div(layout.indices, layout.seqlen, rounding_mode="floor")
    col = layout.indices - row * layout.seqlen
    return row * T + col


def layout_from_lengths(lengths: torch.Tensor) -> Unpadded:
    """Layout for sequences packed back to back (no padded grid exists yet), e.g. from the engine."""
    B = lengths.numel()
    T = int(lengths.max().item()) if B else 0
    cols = torch.arange(T, device=lengths.device)
    mask = cols[None, :] < lengths[:, None]  # (B, T)
    return unpad_layout(mask)


def pad_packed(x: torch.Tensor, layout: Unpadded) -> Padded:
    """(N, ...) packed states (or per-token outputs) -> Padded((B, T, ...), (B, T) mask), T = the longest sequence.

    Example:
        >>> out = encoder.forward_packed(ids, lengths)
        >>> grid = pad_packed(out.hidden, out.layout)   # grid.hidden: (B, T, C), grid.mask: (B, T)
    """
    lengths = layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]  # (B,)
    mask = torch.arange(layout.seqlen, device=x.device)[None, :] < lengths[:, None]  # (B, T)
    return Padded(hidden=pad(x, layout), mask=mask)


def sequence_starts(lengths: torch.Tensor) -> torch.Tensor:
    """(B,) lengths of packed sequences -> (B,) int64 row of each sequence's first token ([CLS]) in the (N,) order."""
    ends = torch.cumsum(lengths, dim=0)
    return (ends - lengths).long()


def positions_unpadded(layout: Unpadded) -> torch.Tensor:
    """(N,) position of each real token inside its own sequence."""
    return layout.indices - torch.div(layout.indices, layout.seqlen, rounding_mode="floor") * layout.seqlen
