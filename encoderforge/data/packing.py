"""Sequence packing with no padding and no cross-document attention (MosaicBERT unpadding + "Prepacking").

Documents are cut into rows of at most `max_len` tokens. A row holds one or more *segments*, each
`[CLS] piece-of-one-document [SEP]`; a long document continues in the next row. A batch of rows is one flat
(N,) id tensor plus (S,) segment lengths, which `Encoder.forward_unpadded(ids, layout_from_lengths(lengths))`
runs with attention confined to each segment. Rows are only a grouping that keeps N close to rows * max_len.

The stream is a pure function of (seed, row index): a run resumed at step s, or a rank of a distributed run,
recomputes exactly the rows it needs without any saved iterator state.

Shapes: N tokens in a batch, S segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from encoderforge import EncoderforgeError
from encoderforge.data.shards import Documents

Piece = tuple[int, int, int, int]  # (corpus, document, start, end): one segment's tokens, [CLS]/[SEP] not included


@dataclass(frozen=True)
class Row:
    index: int  # global row number in the stream; seeds per-row randomness such as masking
    pieces: list[Piece]


@dataclass
class Packed:
    """Packed token ids: segment s is input_ids[cu[s]:cu[s + 1]] with cu = cumsum(lengths)."""

    input_ids: torch.Tensor  # (N,) int64
    lengths: torch.Tensor  # (S,) int32


def epoch_order(docs: list[Documents], epoch: int, seed: int, *, use_weights: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Document order for one epoch of the mix: corpus c appears weight_c times (fractions sampled), shuffled.

    Returns:
        (corpus ids, document ids), two (E,) int64 arrays.
    """
    rng = np.random.default_rng([seed, epoch])
    cs, ds = [], []
    for c, d in enumerate(docs):
        reps, frac = divmod(d.weight if use_weights else 1.0, 1.0)
        parts = [np.arange(len(d))] * int(reps)
        if frac > 0:
            parts.append(np.sort(rng.choice(len(d), size=max(1, round(frac * len(d))), replace=False)))
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        cs.append(np.full(len(idx), c, dtype=np.int64))
        ds.append(idx.astype(np.int64))
    perm = rng.permutation(sum(len(x) for x in cs))
    return np.concatenate(cs)[perm], np.concatenate(ds)[perm]


def pack_rows(lengths: np.ndarray, max_len: int, *, min_piece: int = 16) -> Iterator[list[tuple[int, int, int]]]:
    """Greedily fill rows of `max_len` tokens with pieces (k, start, end) of documents k = 0, 1, ... in order.

    Each piece costs 2 extra tokens ([CLS], [SEP]). A row is closed early rather than start a piece shorter
    than `min_piece` tokens (unless the document's remainder is that short), so few tokens lack context.
    """
    if max_len < 3:
        raise EncoderforgeError(f"max_len must be at least 3 ([CLS] token [SEP]), got {max_len}")
    row: list[tuple[int, int, int]] = []
    room = max_len
    for k, n in enumerate(lengths.tolist()):
        pos = 0
        while pos < n:
            if room - 2 < min(n - pos, min_piece) and row:
                yield row
                row, room = [], max_len
            take = min(n - pos, room - 2)
            row.append((k, pos, pos + take))
            pos += take
            room -= take + 2
    if row:
        yield row


def iter_rows(
    docs: list[Documents], max_len: int, seed: int, *, start: int = 0, use_weights: bool = True, epochs: int | None = None
) -> Iterator[Row]:
    """The endless (or `epochs`-long) row stream, starting at global row `start` (earlier rows are skipped cheaply:
    packing only looks at document lengths)."""
    all_lengths = np.concatenate([d.lengths for d in docs])
    first = np.cumsum([0] + [len(d) for d in docs])[:-1]  # (corpora,) index of each corpus' first document
    index, epoch = 0, 0
    while epochs is None or epoch < epochs:
        cs, ds = epoch_order(docs, epoch, seed, use_weights=use_weights)
        lengths = all_lengths[first[cs] + ds]  # (E,)
        if not lengths.sum():
            raise EncoderforgeError("the corpus has no tokens; prepare it again with real text")
        for pieces in pack_rows(lengths, max_len):
            if index >= start:
                yield Row(index, [(int(cs[k]), int(ds[k]), a, b) for k, a, b in pieces])
            index += 1
        epoch += 1


def row_tokens(docs: list[Documents], row: Row, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """The segments of one row as id arrays, each `[CLS] ... [SEP]`."""
    out = []
    for c, d, a, b in row.pieces:
        seg = np.empty(b - a + 2, dtype=np.int64)
        seg[0], seg[-1] = cls_id, sep_id
        seg[1:-1] = docs[c].tokens(d, a, b)
        out.append(seg)
    return out


def pack(segments: list[np.ndarray]) -> Packed:
    """Concatenate segments into one flat id tensor plus their lengths."""
    ids = torch.from_numpy(np.concatenate(segments)) if segments else torch.zeros(0, dtype=torch.int64)
    return Packed(input_ids=ids, lengths=torch.tensor([len(s) for s in segments], dtype=torch.int32))


def rank_slice(rows: list[Row], rank: int, world: int) -> list[Row]:
    """This rank's contiguous share of a global batch (the global batch must divide evenly)."""
    if len(rows) % world:
        raise EncoderforgeError(
            f"batch of {len(rows)} rows does not split over {world} processes; make train.batch_rows a multiple of the world size"
        )
    n = len(rows) // world
    return rows[rank * n : (rank + 1) * n]
