"""MLM masking: choose positions to predict, corrupt them 80/10/10 (BERT), return positions + labels.

Strategies: "token" (BERT), "whole_word" (all WordPieces of a word together; "##" marks a continuation),
"span" (SpanBERT: contiguous whole words, geometric length), "mixed" (a strategy drawn per row, LegalTurk's
combination of masking strategies). Ratios up to 40% are allowed (MosaicBERT found 30% better than 15%).

Only the masked positions and their labels leave this module: the MLM decoder runs on those rows only.
Shapes: n tokens in a row, M masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError

Strategy = Literal["token", "whole_word", "span", "mixed"]
_STRATEGIES = ("token", "whole_word", "span", "mixed")


@dataclass(frozen=True)
class MaskingConfig:
    """How to mask.

    Args:
        ratio: share of non-special tokens to predict (0.15 BERT, 0.30 MosaicBERT); 0.05 to 0.5.
        strategy: "token" | "whole_word" | "span" | "mixed".
        mask_prob: of the chosen tokens, the share replaced by [MASK]; random_prob: by a random token; the rest stay.
        span_p: SpanBERT's geometric parameter for span lengths (in words); span_max: the longest span.
    """

    ratio: float = 0.15
    strategy: Strategy = "token"
    mask_prob: float = 0.8
    random_prob: float = 0.1
    span_p: float = 0.2
    span_max: int = 10

    def __post_init__(self) -> None:
        if not 0.05 <= self.ratio <= 0.5:
            raise EncoderforgeError(f"masking.ratio={self.ratio} is outside [0.05, 0.5]; BERT uses 0.15, MosaicBERT 0.30")
        if self.strategy not in _STRATEGIES:
            raise EncoderforgeError(f"masking.strategy={self.strategy!r}; use one of {list(_STRATEGIES)}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1:
            raise EncoderforgeError("masking.mask_prob + masking.random_prob must be within [0, 1] (BERT: 0.8 + 0.1)")
        if not 0 < self.span_p <= 1 or self.span_max < 1:
            raise EncoderforgeError("masking.span_p must be in (0, 1] and masking.span_max >= 1")


@dataclass(frozen=True)
class MaskVocab:
    """What masking needs to know about the tokenizer."""

    mask_id: int
    cls_id: int
    sep_id: int
    pad_id: int
    size: int
    continuation: np.ndarray  # (V,) bool: True for "##" WordPiece continuations
    special: np.ndarray  # (V,) bool: never masked

    @staticmethod
    def from_tokenizer(tok: Tokenizer) -> "MaskVocab":
        vocab = tok.get_vocab()
        ids = {}
        for name in ("[MASK]", "[CLS]", "[SEP]", "[PAD]"):
            if name not in vocab:
                raise EncoderforgeError(
                    f"tokenizer has no {name} token; MLM needs a BERT-style vocabulary with [CLS], [SEP], [PAD] and [MASK]"
                )
            ids[name] = vocab[name]
        size = tok.get_vocab_size()
        cont = np.zeros(size, dtype=bool)
        special = np.zeros(size, dtype=bool)
        for token, i in vocab.items():
            cont[i] = token.startswith("##")
        special[list(ids.values())] = True
        return MaskVocab(ids["[MASK]"], ids["[CLS]"], ids["[SEP]"], ids["[PAD]"], size, cont, special)


@dataclass
class Masked:
    input_ids: np.ndarray  # (n,) corrupted ids
    positions: np.ndarray  # (M,) int64 sorted positions to predict
    labels: np.ndarray  # (M,) int64 original ids there


def mask_row(ids: np.ndarray, vocab: MaskVocab, cfg: MaskingConfig, rng: np.random.Generator) -> Masked:
    """Mask one row of token ids (specials such as [CLS]/[SEP] are never chosen).

    Args:
        ids: (n,) token ids, possibly several [CLS] ... [SEP] segments back to back.
        vocab: special ids and the "##" continuation table.
        cfg: ratio and strategy.
        rng: the row's own generator, so masking is reproducible per row (resume, DDP).
    Returns:
        Masked with the corrupted ids, the chosen positions and the original ids at them.
    """
    ids = np.asarray(ids, dtype=np.int64)
    cand = ~vocab.special[ids]  # (n,)
    n_cand = int(cand.sum())
    if n_cand == 0:
        return Masked(ids.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    target = max(1, round(cfg.ratio * n_cand))
    strategy = cfg.strategy
    if strategy == "mixed":
        strategy = ("token", "whole_word", "span")[int(rng.integers(3))]
    if strategy == "token":
        chosen = np.sort(rng.choice(np.flatnonzero(cand), size=target, replace=False))
    else:
        words = _words(ids, cand, vocab.continuation)
        pick = _whole_words(words, target, rng) if strategy == "whole_word" else _spans(words, target, cfg, rng)
        chosen = np.sort(np.concatenate([np.arange(*words[w]) for w in pick]))
    labels = ids[chosen]
    out = ids.copy()
    r = rng.random(len(chosen))
    out[chosen[r < cfg.mask_prob]] = vocab.mask_id
    rand = chosen[(r >= cfg.mask_prob) & (r < cfg.mask_prob + cfg.random_prob)]
    out[rand] = rng.integers(vocab.size, size=len(rand))
    return Masked(out, chosen, labels)


def _words(ids: np.ndarray, cand: np.ndarray, continuation: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of candidate tokens forming one word: a word starts at a non-"##" token or after a special."""
    prev_cand = np.concatenate(([False], cand[:-1]))
    starts = np.flatnonzero(cand & (~continuation[ids] | ~prev_cand))
    # a word ends at the next word start or the next non-candidate (special) token, whichever comes first
    stops = np.append(np.flatnonzero(~cand), len(ids))
    ends = np.minimum(np.append(starts[1:], len(ids)), stops[np.searchsorted(stops, starts)])
    return list(zip(starts.tolist(), ends.tolist()))


def _whole_words(words: list[tuple[int, int]], target: int, rng: np.random.Generator) -> list[int]:
    """Random whole words until `target` tokens (BERT's whole-word masking: skip a word that would overshoot)."""
    pick, total = [], 0
    for w in rng.permutation(len(words)).tolist():
        size = words[w][1] - words[w][0]
        if total and total + size > target:
            continue
        pick.append(w)
        total += size
        if total >= target:
            break
    return pick


def _spans(words: list[tuple[int, int]], target: int, cfg: MaskingConfig, rng: np.random.Generator) -> list[int]:
    """SpanBERT: spans of whole words with geometric lengths (clipped at span_max) until `target` tokens."""
    chosen = np.zeros(len(words), dtype=bool)
    total = 0
    for _ in range(10 * target):  # bounded: each try adds at least one word unless all are taken
        if total >= target or chosen.all():
            break
        length = min(int(rng.geometric(cfg.span_p)), cfg.span_max)
        s = int(rng.integers(len(words)))
        for w in range(s, min(s + length, len(words))):
            if not chosen[w]:
                size = words[w][1] - words[w][0]
                if total and total + size > target:
                    break
                chosen[w] = True
                total += size
    return np.flatnonzero(chosen).tolist()
