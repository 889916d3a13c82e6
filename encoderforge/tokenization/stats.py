"""Compare two tokenizers on a corpus: tokens per word, unknown rate, share of words split, % fewer tokens."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, pre_tokenizers

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file
from encoderforge.tokenization.load import (
    load_tokenizer,
    plain_copy,
    read_corpus,
    unk_token,
)


@dataclass(frozen=True)
class TokenizerStats:
    """How one tokenizer cuts a set of words (words = whitespace/punctuation split, the same for both)."""

    name: str
    vocab_size: int
    tokens: int
    tokens_per_word: float
    unknown_rate: float  # share of words that contain the unknown token
    split_rate: float  # share of words cut into more than one piece


@dataclass(frozen=True)
class StatsReport:
    """Two tokenizers on the same texts; `fewer_tokens_pct` > 0 means b needs fewer tokens than a."""

    texts: int
    words: int
    a: TokenizerStats
    b: TokenizerStats
    fewer_tokens_pct: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        rows = [
            "| tokenizer | vocab | tokens | tokens/word | unknown rate | words split >1 piece |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for tag, s in (("a", self.a), ("b", self.b)):
            rows.append(
                f"| {tag}: {s.name} | {s.vocab_size:,} | {s.tokens:,} | {s.tokens_per_word:.3f} | "
                f"{100 * s.unknown_rate:.2f}% | {100 * s.split_rate:.1f}% |"
            )
        pct = self.fewer_tokens_pct
        verdict = f"{pct:.1f}% fewer" if pct >= 0 else f"{-pct:.1f}% more"
        rows += ["", f"{self.texts:,} texts, {self.words:,} words: b needs {verdict} tokens than a."]
        return "\n".join(rows)

    def write_json(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON, atomically."""
        with atomic_file(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        return Path(path)


def tokenizer_stats(
    files_or_texts: Sequence[str | Path],
    tok_a: Tokenizer | str | Path,
    tok_b: Tokenizer | str | Path,
    *,
    names: tuple[str, str] | None = None,
) -> StatsReport:
    """Compare two tokenizers on the same text: tokens per word, unknown rate, words split, % fewer tokens.

    Args:
        files_or_texts: `Path`s are read as UTF-8 files (directories expand); `str`s are texts.
        tok_a, tok_b: Tokenizers, or paths `load_tokenizer` accepts.
        names: labels for the table; default the paths, or "a"/"b".
    Returns:
        a StatsReport (`.to_markdown()` for the table).
    """
    paths = [x for x in files_or_texts if isinstance(x, Path)]
    texts = [x for x in files_or_texts if not isinstance(x, Path)] + (read_corpus(paths) if paths else [])
    if not any(t.strip() for t in texts):
        raise EncoderforgeError("no text to measure; pass non-empty UTF-8 files")
    words = [[w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t)] for t in texts]
    words = [w for w in words if w]  # (texts,) lists of words
    names = names or (
        str(tok_a) if not isinstance(tok_a, Tokenizer) else "a",
        str(tok_b) if not isinstance(tok_b, Tokenizer) else "b",
    )
    a, b = (_count(t if isinstance(t, Tokenizer) else load_tokenizer(t), words, nm) for t, nm in zip((tok_a, tok_b), names))
    return StatsReport(
        texts=len(texts),
        words=sum(map(len, words)),
        a=a,
        b=b,
        fewer_tokens_pct=100.0 * (1.0 - b.tokens / a.tokens) if a.tokens else 0.0,
    )


def _count(tok: Tokenizer, words: list[list[str]], name: str) -> TokenizerStats:
    plain = plain_copy(tok)
    unk = plain.token_to_id(unk_token(plain))
    tokens = unknown = split = n_words = 0
    for enc, ws in zip(plain.encode_batch(words, is_pretokenized=True, add_special_tokens=False), words):
        per_word = Counter(enc.word_ids)  # word index -> pieces
        unk_words = {w for w, i in zip(enc.word_ids, enc.ids) if i == unk}
        tokens += len(enc.ids)
        unknown += len(unk_words)
        split += sum(1 for c in per_word.values() if c > 1)
        n_words += len(ws)
    n = max(n_words, 1)
    return TokenizerStats(
        name=name,
        vocab_size=plain.get_vocab_size(),
        tokens=tokens,
        tokens_per_word=tokens / n,
        unknown_rate=unknown / n,
        split_rate=split / n,
    )
