"""A thin layer over Hugging Face `tokenizers`: load, train, extend, compare.

We never re-implement tokenization: the Rust `tokenizers` library is fast, exact and well kept.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from encoderforge import EncoderforgeError


def load_tokenizer(path: str | Path, *, lowercase: bool | None = None) -> Tokenizer:
    """Load tokenizer.json, or build a BERT WordPiece tokenizer from vocab.txt.

    Args:
        path: a checkpoint directory, a tokenizer.json file or a vocab.txt file.
        lowercase: for vocab.txt only; default reads tokenizer_config.json's do_lower_case, else True.
    Returns:
        a `tokenizers.Tokenizer` with [CLS] ... [SEP] post-processing and truncation disabled.
    """
    path = Path(path)
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
    import json

    cfg = folder / "tokenizer_config.json"
    if cfg.exists():
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True
