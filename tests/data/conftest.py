"""Fixtures for data tests: a small legal corpus (licensedcode) and a small WordPiece tokenizer trained on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tokenizers.implementations import BertWordPieceTokenizer


@pytest.fixture(scope="session")
def legal_dir(tmp_path_factory, license_texts) -> Path:
    """60 real license texts (with YAML front matter) plus one exact duplicate under another name."""
    d = tmp_path_factory.mktemp("legal")
    for p in license_texts[:60]:
        shutil.copy(p, d / p.name)
    shutil.copy(license_texts[0], d / "zz-duplicate.LICENSE")
    return d


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, license_texts) -> Path:
    """A 2,000-token uncased WordPiece vocabulary trained on license texts (keeps tests fast)."""
    d = tmp_path_factory.mktemp("tok")
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator((p.read_text(encoding="utf-8", errors="replace") for p in license_texts[:300]),
                            vocab_size=2000, min_frequency=2)
    tok.save(str(d / "tokenizer.json"))
    return d / "tokenizer.json"
