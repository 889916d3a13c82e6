"""A thin layer over Hugging Face `tokenizers`: load, train, extend, compare.

We never re-implement tokenization: the Rust `tokenizers` library is fast, exact and well kept. This module
only reads corpora safely, configures BERT-style WordPiece, edits the WordPiece vocabulary and counts tokens.
Shapes: V = vocabulary size, C = hidden size.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_tokenizer(path: str | Path, *, lowercase: bool | None = None) -> Tokenizer:
    """Load tokenizer.json, or build a BERT WordPiece tokenizer from vocab.txt.

    Args:
        path: a checkpoint directory, a zoo name ('minilm-l6'), a tokenizer.json file or a vocab.txt file.
        lowercase: for vocab.txt only; default reads tokenizer_config.json's do_lower_case, else True.
    Returns:
        a `tokenizers.Tokenizer` with [CLS] ... [SEP] post-processing and truncation disabled.
    """
    from encoderforge.model.zoo import resolve_model

    path = resolve_model(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).exists():
                return load_tokenizer(path / name, lowercase=lowercase)
        raise EncoderforgeError(f"{path}: no tokenizer.json or vocab.txt; copy the tokenizer files into the checkpoint")
    if not path.exists():
        raise EncoderforgeError(f"{path}: no such tokenizer file")
    if path.suffix == ".json":
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a plain Exception
            raise EncoderforgeError(f"{path}: not a valid tokenizer.json ({e})") from None
    else:
        if lowercase is None:
            lowercase = _lowercase_from_config(path.parent)
        tok = BertWordPieceTokenizer(str(path), lowercase=lowercase)._tokenizer
    tok.no_truncation()
    tok.no_padding()
    return tok


def _lowercase_from_config(folder: Path) -> bool:
    cfg = folder / "tokenizer_config.json"
    if cfg.exists():
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True


# ---- reading corpora ---------------------------------------------------------------------------------

def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory stands for the (non-hidden) files directly inside it, sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not inside:
                raise EncoderforgeError(f"{p}: directory holds no files; pass UTF-8 text files")
            out.extend(inside)
        elif p.is_file():
            out.append(p)
        else:
            raise EncoderforgeError(f"{p}: no such file; pass existing UTF-8 text files (or a directory of them)")
    return out


def read_text(path: Path) -> str:
    """A whole UTF-8 file; anything else is an error naming the line and byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EncoderforgeError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start}, 0x{raw[e.start]:02x}); "
                                "re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8`, or leave it out") from None


def read_corpus(paths: Iterable[str | Path]) -> list[str]:
    """Read every file (directories expanded) as UTF-8 text; an empty corpus is an error."""
    files = expand_paths(paths)
    if not files:
        raise EncoderforgeError("no corpus files given; pass one or more UTF-8 text files")
    texts = [read_text(f) for f in files]
    if not any(t.strip() for t in texts):
        raise EncoderforgeError(f"empty corpus: the {len(files)} file(s) starting with {files[0]} hold no text")
    return texts


# ---- training and saving -------------------------------------------------------------------------------

def train_wordpiece(files: Sequence[str | Path], *, vocab_size: int, lowercase: bool = True,
                    special_tokens: Sequence[str] = BERT_SPECIALS, min_frequency: int = 2,
                    limit_alphabet: int = 1000) -> Tokenizer:
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
        raise EncoderforgeError(f"--vocab-size {vocab_size} is too small; it must exceed the {len(special_tokens)} "
                                "special tokens (typical: 8000-32000)")
    if min_frequency < 1:
        raise EncoderforgeError(f"--min-frequency must be >= 1, got {min_frequency}")
    texts = read_corpus(files)
    tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)  # accents follow case
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
                               limit_alphabet=limit_alphabet, continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
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
    vocab = _wordpiece_vocab(tok)  # token -> id, contiguous 0..V-1
    lines = sorted(vocab, key=vocab.__getitem__)
    specials = {k: t for k, t in zip(("pad", "unk", "cls", "sep", "mask"), BERT_SPECIALS) if t in vocab}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": _is_lowercase(tok),
              **{f"{k}_token": t for k, t in specials.items()}}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in lines), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({f"{k}_token": t for k, t in specials.items()}, indent=2), encoding="utf-8")
    return Path(path)


def train_wordpiece_dir(files: Sequence[str | Path], out: str | Path, *, vocab_size: int, lowercase: bool = True,
                        min_frequency: int = 2, overwrite: bool = False) -> Tokenizer:
    """`train_wordpiece` then `save_tokenizer` (what `encoderforge tokenizer train` runs); nothing is written on error."""
    if Path(out).exists() and not overwrite:
        raise EncoderforgeError(f"{out}: already exists; pass --overwrite or choose another output path")
    tok = train_wordpiece(files, vocab_size=vocab_size, lowercase=lowercase, min_frequency=min_frequency)
    save_tokenizer(tok, out, overwrite=overwrite)
    return tok


def _wordpiece_vocab(tok: Tokenizer) -> dict[str, int]:
    model = json.loads(tok.to_str())["model"]
    if model.get("type") != "WordPiece":
        raise EncoderforgeError(f"tokenizer model is {model.get('type')!r}; encoderforge edits and saves WordPiece "
                                "(BERT) tokenizers only")
    vocab: dict[str, int] = model["vocab"]
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise EncoderforgeError("WordPiece vocabulary ids have gaps; vocab.txt needs ids 0..V-1")
    return vocab


def _is_lowercase(tok: Tokenizer) -> bool:
    def walk(n: dict | None) -> bool:
        if not n:
            return False
        if n.get("type") == "Sequence":
            return any(walk(c) for c in n.get("normalizers", []))
        return n.get("type") == "Lowercase" or (n.get("type") == "BertNormalizer" and bool(n.get("lowercase")))
    return walk(json.loads(tok.to_str()).get("normalizer"))


def _plain(tok: Tokenizer) -> Tokenizer:
    """A copy without padding or truncation, so counts see every token and the caller's object is untouched."""
    out = Tokenizer.from_str(tok.to_str())
    out.no_padding()
    out.no_truncation()
    return out


# ---- vocabulary extension (amplified vocabulary) -------------------------------------------------------

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
    vocab = dict(_wordpiece_vocab(tok))
    plain = _plain(tok)
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
        raise EncoderforgeError(f"term {raw!r} is not a single word for this tokenizer (splits into {pieces}); "
                                "a WordPiece entry is one word without spaces or punctuation: list its parts instead")
    return word


def suggest_terms(files: Sequence[str | Path], tok: Tokenizer, n: int, *, min_pieces: int = 3,
                  min_count: int = 2) -> list[str]:
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
    plain = _plain(tok)
    counts: Counter[str] = Counter()
    for text in read_corpus(files):
        norm = plain.normalizer.normalize_str(text) if plain.normalizer is not None else text
        pre = plain.pre_tokenizer
        pieces = pre.pre_tokenize_str(norm) if pre is not None else [(w, None) for w in norm.split()]
        counts.update(w for w, _ in pieces if w.isalpha())
    cands = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    encs = plain.encode_batch([[w] for w in cands], is_pretokenized=True, add_special_tokens=False)
    unk = plain.token_to_id(_unk_token(plain))
    keep = [w for w, e in zip(cands, encs) if len(e.ids) >= min_pieces and unk not in e.ids]
    return keep[:n]


def _unk_token(tok: Tokenizer) -> str:
    return json.loads(tok.to_str())["model"].get("unk_token", "[UNK]")


def grow_embeddings(encoder: nn.Module, added: Sequence[AddedTerm]) -> nn.Module:
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
    new = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=old.padding_idx,
                       dtype=weight.dtype, device=weight.device)
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
            raise EncoderforgeError(f"term {a.term!r}: old sub-token ids {list(a.old_ids)} do not fit the {n_old} "
                                    "embedding rows; the tokenizer does not belong to this model")
    size = max([n_old] + [a.id + 1 for a in added])
    out = table.new_zeros((size, *table.shape[1:]))
    out[:n_old] = table
    for a in added:
        out[a.id] = table[list(a.old_ids)].mean(dim=0)  # (len(old_ids), *) -> (*,)
    return out


def extend_checkpoint(model: str | Path, out: str | Path, *, terms_file: str | Path | None = None,
                      corpus: Sequence[str | Path] | None = None, top: int = 200,
                      overwrite: bool = False) -> list[AddedTerm]:
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

    if (terms_file is None) == (not corpus):
        raise EncoderforgeError("pass exactly one of --terms FILE or --from-corpus FILES")
    if Path(out).exists() and not overwrite:
        raise EncoderforgeError(f"{out}: already exists; pass --overwrite or choose another output path")
    loaded = checkpoint.load(model)
    tok = load_tokenizer(model)
    rows = loaded.encoder.embeddings.tok.num_embeddings
    if tok.get_vocab_size() > rows:
        raise EncoderforgeError(f"{model}: tokenizer has {tok.get_vocab_size()} tokens but the model {rows} embedding "
                                "rows; the tokenizer files belong to another model")
    if terms_file is not None:
        lines = read_text(expand_paths([terms_file])[0]).splitlines()
        terms = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    else:
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
