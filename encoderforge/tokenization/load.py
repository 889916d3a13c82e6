"""Load tokenizers and read corpora safely; small helpers on a tokenizer's WordPiece model.

We never re-implement tokenization: the Rust `tokenizers` library is fast, exact and well kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from encoderforge import EncoderforgeError

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
        raise EncoderforgeError(
            f"{path}: line {line}: not valid UTF-8 (byte offset {e.start}, 0x{raw[e.start]:02x}); "
            "re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8`, or leave it out"
        ) from None


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


def wordpiece_vocab(tok: Tokenizer) -> dict[str, int]:
    model = json.loads(tok.to_str())["model"]
    if model.get("type") != "WordPiece":
        raise EncoderforgeError(
            f"tokenizer model is {model.get('type')!r}; encoderforge edits and saves WordPiece (BERT) tokenizers only"
        )
    vocab: dict[str, int] = model["vocab"]
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise EncoderforgeError("WordPiece vocabulary ids have gaps; vocab.txt needs ids 0..V-1")
    return vocab


def is_lowercase(tok: Tokenizer) -> bool:
    def walk(n: dict | None) -> bool:
        if not n:
            return False
        if n.get("type") == "Sequence":
            return any(walk(c) for c in n.get("normalizers", []))
        return n.get("type") == "Lowercase" or (n.get("type") == "BertNormalizer" and bool(n.get("lowercase")))

    return walk(json.loads(tok.to_str()).get("normalizer"))


def plain_copy(tok: Tokenizer) -> Tokenizer:
    """A copy without padding or truncation, so counts see every token and the caller's object is untouched."""
    out = Tokenizer.from_str(tok.to_str())
    out.no_padding()
    out.no_truncation()
    return out


def unk_token(tok: Tokenizer) -> str:
    return json.loads(tok.to_str())["model"].get("unk_token", "[UNK]")
