"""Train a BERT-style WordPiece tokenizer on domain text and save it as tokenizer.json + vocab.txt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir, check_output
from encoderforge.tokenization.load import (
    BERT_SPECIALS,
    is_lowercase,
    read_corpus,
    wordpiece_vocab,
)


def train_wordpiece(
    files: Sequence[str | Path],
    *,
    vocab_size: int,
    lowercase: bool = True,
    special_tokens: Sequence[str] = BERT_SPECIALS,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> Tokenizer:
    """Train a BERT-compatible WordPiece tokenizer (the same pipeline as bert-base-uncased / MiniLM).

    Args:
        files: UTF-8 text files (directories expand to their files).
        vocab_size: target vocabulary size, special tokens and alphabet included.
        lowercase: lower-case and strip accents (uncased BERT); False keeps case.
        special_tokens: they get ids 0, 1, ... in this order, so "[PAD]" first gives pad_token_id=0.
        min_frequency: a pair must occur this often to be merged.
        limit_alphabet: keep at most this many distinct characters.
    Returns:
        a Tokenizer that encodes "x" as [CLS] x [SEP] (pairs as [CLS] a [SEP] b [SEP]).
    Example:
        >>> tok = train_wordpiece(["corpus.txt"], vocab_size=8000)
    """
    missing = [s for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if s not in special_tokens]
    if missing:
        raise EncoderforgeError(f"special_tokens lacks {missing}; a BERT tokenizer needs [PAD], [UNK], [CLS], [SEP]")
    if vocab_size <= len(special_tokens):
        raise EncoderforgeError(
            f"--vocab-size {vocab_size} is too small; it must exceed the {len(special_tokens)} "
            "special tokens (typical: 8000-32000)"
        )
    if min_frequency < 1:
        raise EncoderforgeError(f"--min-frequency must be >= 1, got {min_frequency}")
    texts = read_corpus(files)
    tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)  # accents follow case
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        limit_alphabet=limit_alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json into `path`, atomically.

    The directory loads with `load_tokenizer` and with `transformers.AutoTokenizer` (BertTokenizerFast).

    Args:
        tok: a WordPiece tokenizer.
        path: output directory (replaced as a whole).
        overwrite: replace an existing directory.
    Returns:
        the directory.
    """
    vocab = wordpiece_vocab(tok)  # token -> id, contiguous 0..V-1
    lines = sorted(vocab, key=vocab.__getitem__)
    specials = {k: t for k, t in zip(("pad", "unk", "cls", "sep", "mask"), BERT_SPECIALS) if t in vocab}
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": is_lowercase(tok),
        **{f"{k}_token": t for k, t in specials.items()},
    }
    with atomic_dir(path, overwrite=overwrite) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in lines), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({f"{k}_token": t for k, t in specials.items()}, indent=2), encoding="utf-8"
        )
    return Path(path)


def train_wordpiece_dir(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    vocab_size: int,
    lowercase: bool = True,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> Tokenizer:
    """`train_wordpiece` then `save_tokenizer` (what `encoderforge tokenizer train` runs); nothing is written on error.
    An `out` that is, lies inside or holds a corpus file or directory is refused before training."""
    check_output(out, files, flag="--out", expect="dir")
    if Path(out).exists() and not overwrite:
        raise EncoderforgeError(f"{out}: already exists; pass --overwrite or choose another output path")
    tok = train_wordpiece(files, vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency)
    save_tokenizer(tok, out, overwrite=overwrite)
    return tok
