"""Shared by the fine-tuning tasks: input lines -> texts, the one tokenizer-truncation helper, texts -> token windows
(chunk-with-overlap for long documents), packed batches with no padding, and resume-exact shuffled epochs.

Shapes: D documents in a batch, S chunks (sequences), N real tokens of all chunks back to back, C hidden, L labels.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError


@dataclass
class Encoded:
    """Token windows of a list of documents: windows of document d are those with doc[i] == d."""

    ids: list[list[int]]  # one [CLS] ... [SEP] window each
    doc: list[int]  # (S,) the document of each window
    num_docs: int
    truncated: int  # documents whose tail was dropped (more windows than max_chunks)


def special_ids(tok: Tokenizer) -> tuple[int, int]:
    """[CLS] and [SEP] ids of a BERT-style tokenizer."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise EncoderforgeError("the tokenizer has no [CLS]/[SEP] tokens; fine-tuning needs a BERT-style WordPiece tokenizer")
    return cls, sep


def split_pairs(texts: Sequence[str], fields: int) -> list[tuple[str, ...]]:
    """Input lines as model inputs: the line itself, or for pair models `text a<TAB>text b`."""
    if fields == 1:
        return [(t,) for t in texts]
    out: list[tuple[str, ...]] = []
    for i, t in enumerate(texts, 1):
        a, tab, b = t.partition("\t")
        if not tab or not a.strip() or not b.strip():
            raise EncoderforgeError(f"line {i}: this model reads sentence pairs; write each as `text a<TAB>text b`")
        out.append((a, b))
    return out


@contextmanager
def truncation(tok: Tokenizer, max_length: int | None = None, **kw: Any) -> Iterator[Tokenizer]:
    """Inside the block `tok` truncates at `max_length` (None: not at all; `kw` as Tokenizer.enable_truncation:
    stride, strategy); afterwards the settings from before are back (the Engine enables truncation on its tokenizer,
    and tasks encode with the same one)."""
    saved = tok.truncation
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length, **kw)
    try:
        yield tok
    finally:
        tok.no_truncation()
        if saved:
            tok.enable_truncation(**saved)


def longest_first(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Lengths after the tokenizers library's "longest_first" pair truncation to `budget` tokens (its closed form:
    a shorter side of at most half the budget stays whole and the longer takes the rest; else the shorter side gets
    floor(budget / 2), the first side on a tie; tests/tasks/test_sequences.py checks it against the library)."""
    if na + nb <= budget:
        return na, nb
    short = min(na, nb)
    if 2 * short <= budget:
        return (na, budget - na) if na <= nb else (budget - nb, nb)
    half = budget // 2
    return (half, budget - half) if na <= nb else (budget - half, half)


def encode_texts(
    tok: Tokenizer, texts: Sequence[Sequence[str]], max_length: int, *, max_chunks: int = 1, stride: int = 64
) -> Encoded:
    """Tokenize documents (one text, or a pair) into [CLS] ... [SEP] windows of at most `max_length` tokens.

    Long single texts are split into up to `max_chunks` windows overlapping by `stride` tokens (so no sentence is
    only seen cut at a window edge); max_chunks=1 keeps the head, as plain truncation does. Pairs are truncated
    longest-first into one `[CLS] a [SEP] b [SEP]` window whose token types are all 0: [SEP] marks the boundary
    (as in RoBERTa), so the inference Engine, which serves single segments, sees what training saw.
    """
    cls, sep = special_ids(tok)
    body = max_length - 2
    if body < 8 or (max_chunks > 1 and not 0 <= stride < body):
        raise EncoderforgeError(
            f"max_length={max_length} with chunk stride={stride}: need max_length >= 10 and "
            "0 <= stride < max_length - 2 (lower --stride)"
        )
    ids: list[list[int]] = []
    doc: list[int] = []
    truncated = 0
    if texts and len(texts[0]) == 2:
        # each side alone, then longest-first truncation here: the tokenizer's own pair truncation also builds every
        # overflowing window of BOTH sides, which took 15 GB for 1,280 (snippet, license text) pairs at 192 tokens
        with truncation(tok):
            a_ids = tok.encode_batch([t[0] for t in texts], add_special_tokens=False)
            b_ids = tok.encode_batch([t[1] for t in texts], add_special_tokens=False)
        for d, (ea, eb) in enumerate(zip(a_ids, b_ids)):
            na, nb = longest_first(len(ea.ids), len(eb.ids), max_length - 3)
            ids.append([cls, *ea.ids[:na], sep, *eb.ids[:nb], sep])
            doc.append(d)
            truncated += (na, nb) != (len(ea.ids), len(eb.ids))
        return Encoded(ids, doc, len(texts), truncated)
    with truncation(tok):
        pieces = tok.encode_batch([t[0] for t in texts], add_special_tokens=False)
    step = body - stride if max_chunks > 1 else body
    for d, enc in enumerate(pieces):
        p = enc.ids
        n = 1 if len(p) <= body else 1 + math.ceil((len(p) - body) / step)
        truncated += n > max_chunks
        for c in range(min(n, max_chunks)):
            ids.append([cls, *p[c * step : c * step + body], sep])
            doc.append(d)
    return Encoded(ids, doc, len(texts), truncated)


@dataclass
class SeqBatch:
    """Chunks of D documents packed back to back (no padding) with per-document targets."""

    input_ids: torch.Tensor  # (N,) int64
    lengths: torch.Tensor  # (S,) int64 window lengths
    doc: torch.Tensor  # (S,) int64 document index in 0..D-1
    targets: torch.Tensor  # (D,) int64 class, (D, L) float multi-hot or (D,) float value

    def to(self, device: torch.device | str) -> "SeqBatch":
        return SeqBatch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.lengths, self.doc, self.targets)))

    @property
    def num_docs(self) -> int:
        return int(self.targets.shape[0])


def make_batch(enc: Encoded, by_doc: list[list[int]], docs: Sequence[int], targets: torch.Tensor) -> SeqBatch:
    """Pack the windows of documents `docs` (indices into enc) into one SeqBatch; `targets` is indexed by doc."""
    win = [w for d in docs for w in by_doc[d]]
    doc = [j for j, d in enumerate(docs) for _ in by_doc[d]]
    flat = torch.tensor([t for w in win for t in enc.ids[w]], dtype=torch.long)
    lengths = torch.tensor([len(enc.ids[w]) for w in win], dtype=torch.long)
    return SeqBatch(flat, lengths, torch.tensor(doc, dtype=torch.long), targets[list(docs)])


def windows_by_doc(enc: Encoded) -> list[list[int]]:
    by_doc: list[list[int]] = [[] for _ in range(enc.num_docs)]
    for w, d in enumerate(enc.doc):
        by_doc[d].append(w)
    return by_doc


def steps_per_epoch(n: int, batch_rows: int) -> int:
    return max(1, math.ceil(n / batch_rows))


def epoch_steps(
    n: int, batch_rows: int, micro_rows: int, seed: int, start_step: int, *, rank: int = 0, world: int = 1
) -> Iterator[list[list[int]]]:
    """From optimizer step `start_step` on: this process's micro-batches of example indices, each epoch a fresh
    permutation seeded by (seed, epoch), so resuming at any step replays exactly the same stream."""
    per = steps_per_epoch(n, batch_rows)
    step = start_step
    while True:
        epoch, k = divmod(step, per)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        mine = order[k * batch_rows : (k + 1) * batch_rows][rank::world].tolist()
        micro = micro_rows or len(mine) or 1
        yield [mine[i : i + micro] for i in range(0, len(mine), micro)]
        step += 1


def fixed_batches(n: int, batch_rows: int, *, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Evaluation batches: every example once, in order, split over processes."""
    mine = list(range(rank, n, world))
    return [mine[i : i + batch_rows] for i in range(0, len(mine), batch_rows)]


def train_step_batches(
    enc: Encoded, y: torch.Tensor, batch_rows: int, micro_rows: int, seed: int, start_step: int, *, rank: int = 0, world: int = 1
) -> Iterator[list[SeqBatch]]:
    """For each optimizer step from `start_step` on: this process's micro-batches of documents (resume-exact)."""
    by_doc = windows_by_doc(enc)
    for micro in epoch_steps(enc.num_docs, batch_rows, micro_rows, seed, start_step, rank=rank, world=world):
        yield [make_batch(enc, by_doc, docs, y) for docs in micro]


def eval_batches(enc: Encoded, y: torch.Tensor, batch_rows: int, *, rank: int = 0, world: int = 1) -> Iterator[SeqBatch]:
    """Fixed batches of documents in order (this process's share), for evaluation and prediction."""
    by_doc = windows_by_doc(enc)
    for docs in fixed_batches(enc.num_docs, max(batch_rows, 32), rank=rank, world=world):
        yield make_batch(enc, by_doc, docs, y)
