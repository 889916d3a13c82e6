"""Vocabulary extension (amplified vocabulary): append domain words to a WordPiece vocabulary and grow the
embedding table (new rows = mean of their old sub-token rows). Shapes: V = vocabulary size, C = hidden size."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.fileio import check_output
from encoderforge.tokenization.load import (
    expand_paths,
    load_tokenizer,
    plain_copy,
    read_corpus,
    read_text,
    unk_token,
    wordpiece_vocab,
)
from encoderforge.tokenization.train import save_tokenizer

if TYPE_CHECKING:
    from encoderforge.model.encoder import Encoder


@dataclass(frozen=True)
class AddedTerm:
    """A word appended to the WordPiece vocabulary: its new id and how the old tokenizer split it."""

    term: str
    id: int
    old_ids: tuple[int, ...]
    old_tokens: tuple[str, ...]


def extend_vocabulary(tok: Tokenizer, terms: Iterable[str]) -> tuple[Tokenizer, list[AddedTerm]]:
    """Append domain words to the WordPiece vocabulary itself.

    They are whole-word entries, so greedy longest-match picks them at the start of a word ("licensor" ->
    one token; "licensors" -> "licensor ##s"); unlike `add_tokens` they never match inside another word.
    Terms are normalized like the text (lower-cased for uncased models); ones already in the vocabulary are skipped.

    Args:
        tok: a WordPiece tokenizer (not modified).
        terms: single words; a term the pre-tokenizer splits (spaces, punctuation) is an error.
    Returns:
        (new tokenizer, the added terms with new ids = V, V+1, ... and their old sub-token ids).
    Example:
        >>> new, added = extend_vocabulary(tok, ["licensor", "indemnification"])
    """
    vocab = dict(wordpiece_vocab(tok))
    plain = plain_copy(tok)
    if any(i >= len(vocab) for i in tok.get_added_tokens_decoder()):  # id -> AddedToken
        raise EncoderforgeError("tokenizer has added tokens past the WordPiece vocabulary; new words cannot get ids V..")
    added: list[AddedTerm] = []
    for raw in terms:
        word = _normalize_word(plain, raw)
        if word in vocab:
            continue
        enc = plain.encode(word, add_special_tokens=False)
        added.append(AddedTerm(word, len(vocab), tuple(enc.ids), tuple(enc.tokens)))
        vocab[word] = len(vocab)
    data = json.loads(tok.to_str())
    data["model"]["vocab"] = vocab
    return Tokenizer.from_str(json.dumps(data)), added


def _normalize_word(tok: Tokenizer, raw: str) -> str:
    word = raw.strip()
    if tok.normalizer is not None:
        word = tok.normalizer.normalize_str(word)
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(word)] if tok.pre_tokenizer is not None else [word]
    if pieces != [word] or not word:
        raise EncoderforgeError(
            f"term {raw!r} is not a single word for this tokenizer (splits into {pieces}); "
            "a WordPiece entry is one word without spaces or punctuation: list its parts instead"
        )
    return word


def suggest_terms(files: Sequence[str | Path], tok: Tokenizer, n: int, *, min_pieces: int = 3, min_count: int = 2) -> list[str]:
    """The `n` most frequent corpus words that `tok` splits into >= `min_pieces` pieces (the ones worth adding).

    Args:
        files: UTF-8 corpus files (directories expand).
        tok: the tokenizer to extend.
        n: how many words to return at most.
        min_pieces: only words split at least this much.
        min_count: ignore rarer words.
    Returns:
        normalized words, most frequent first (ties alphabetical); words with [UNK] pieces are left out.
    """
    if n < 1:
        raise EncoderforgeError(f"--top must be >= 1, got {n}")
    plain = plain_copy(tok)
    counts: Counter[str] = Counter()
    for text in read_corpus(files):
        norm = plain.normalizer.normalize_str(text) if plain.normalizer is not None else text
        pre = plain.pre_tokenizer
        pieces = pre.pre_tokenize_str(norm) if pre is not None else [(w, None) for w in norm.split()]
        counts.update(w for w, _ in pieces if w.isalpha())
    cands = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    encs = plain.encode_batch([[w] for w in cands], is_pretokenized=True, add_special_tokens=False)
    unk = plain.token_to_id(unk_token(plain))
    keep = [w for w, e in zip(cands, encs) if len(e.ids) >= min_pieces and unk not in e.ids]
    return keep[:n]


def grow_embeddings(encoder: Encoder, added: Sequence[AddedTerm]) -> Encoder:
    """Give each added term an embedding row = mean of its old sub-token rows (amplified vocabulary).

    Resizes `encoder.embeddings.tok` in place to cover the new ids and sets `encoder.cfg.vocab_size`.

    Args:
        encoder: an encoderforge Encoder whose tokenizer produced `added`.
        added: from `extend_vocabulary`.
    Returns:
        the same encoder.
    """
    old = encoder.embeddings.tok
    weight = grow_rows(old.weight.detach(), added)  # (V', C)
    new = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=old.padding_idx, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
    new.weight.requires_grad_(old.weight.requires_grad)
    encoder.embeddings.tok = new
    encoder.cfg = dataclasses.replace(encoder.cfg, vocab_size=weight.shape[0])
    return encoder


def grow_rows(table: torch.Tensor, added: Sequence[AddedTerm]) -> torch.Tensor:
    """(V, *) -> (V', *): copy the old rows; row `a.id` = mean of rows `a.old_ids` (also used for an MLM bias)."""
    n_old = table.shape[0]
    for a in added:
        if not a.old_ids or max(a.old_ids) >= n_old:
            raise EncoderforgeError(
                f"term {a.term!r}: old sub-token ids {list(a.old_ids)} do not fit the {n_old} "
                "embedding rows; the tokenizer does not belong to this model"
            )
    size = max([n_old] + [a.id + 1 for a in added])
    out = table.new_zeros((size, *table.shape[1:]))
    out[:n_old] = table
    for a in added:
        out[a.id] = table[list(a.old_ids)].mean(dim=0)  # (len(old_ids), *) -> (*,)
    return out


def extend_checkpoint(
    model: str | Path,
    out: str | Path,
    *,
    terms_file: str | Path | None = None,
    corpus: Sequence[str | Path] | None = None,
    top: int = 200,
    overwrite: bool = False,
) -> list[AddedTerm]:
    """Extend a checkpoint's vocabulary and embeddings; write a full encoderforge checkpoint to `out`.

    Args:
        model: encoderforge or Hugging Face BERT checkpoint directory holding its tokenizer files.
        out: output checkpoint directory (written atomically; nothing is left on error).
        terms_file: UTF-8 file, one term per line ('#' comments and blank lines ignored); or
        corpus: files to pick the `top` most frequent badly split words from (`suggest_terms`).
        top: how many terms to take from the corpus.
        overwrite: replace an existing `out`.
    Returns:
        the terms added (an MLM bias in the checkpoint grows with the same mean rule).
    """
    from encoderforge.model import checkpoint
    from encoderforge.model.zoo import resolve_model

    if (terms_file is None) == (not corpus):
        raise EncoderforgeError("pass exactly one of --terms FILE or --from-corpus FILES")
    # before any work: never over the model, the terms or a corpus file, nor inside a corpus directory
    check_output(out, [resolve_model(model), terms_file, *(corpus or [])], flag="--out", expect="dir")
    if Path(out).exists() and not overwrite:
        raise EncoderforgeError(f"{out}: already exists; pass --overwrite or choose another output path")
    loaded = checkpoint.load(model)  # also refuses a tokenizer larger than the embedding table
    tok = load_tokenizer(model)
    if terms_file is not None:
        lines = read_text(expand_paths([terms_file])[0]).splitlines()
        terms = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    else:
        assert corpus is not None  # the exactly-one check above: no terms_file means a non-empty corpus
        terms = suggest_terms(corpus, tok, top)
    new_tok, added = extend_vocabulary(tok, terms)
    if not added:
        raise EncoderforgeError(f"all {len(terms)} terms are already in the vocabulary of {model}; nothing to add")
    grow_embeddings(loaded.encoder, added)
    extra = dict(loaded.extra)
    if "mlm.bias" in extra:  # the tied MLM decoder needs one bias per vocabulary entry
        extra["mlm.bias"] = grow_rows(extra["mlm.bias"], added)
    with tempfile.TemporaryDirectory() as td:
        save_tokenizer(new_tok, Path(td) / "tok")
        checkpoint.save(loaded.encoder, out, tokenizer_dir=Path(td) / "tok", extra=extra, overwrite=overwrite)
    return added
