"""Fixtures for training tests: a small legal corpus (licensedcode) and a small WordPiece tokenizer trained on it."""

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


@pytest.fixture(scope="session")
def legal_shards(tmp_path_factory, legal_dir, small_tokenizer) -> Path:
    """The legal corpus prepared into shards with a 20% held-out split."""
    from encoderforge.data.corpus import CorpusSpec, prepare_corpus

    out = tmp_path_factory.mktemp("shards") / "legal"
    prepare_corpus([CorpusSpec(str(legal_dir), name="legal")], small_tokenizer, out, eval_fraction=0.2)
    return out


@pytest.fixture
def tiny_overrides(legal_shards, small_tokenizer, tmp_path):
    """`--set` overrides for a seconds-long bert-tiny run on the legal shards (dropout on: RNG is exercised)."""
    def make(out: Path | None = None, **extra) -> list[str]:
        base = {"data.shards": legal_shards, "model.tokenizer": small_tokenizer, "model.preset": "bert-tiny",
                "data.max_len": 64, "data.eval_rows": 8, "train.batch_rows": 8, "train.steps": 12,
                "train.warmup_steps": 2, "train.lr": 2e-3, "train.log_every": 1, "train.eval_every": 6,
                "train.save_every": 4, "train.progress": False, "train.device": "cpu",
                "train.out_dir": out or tmp_path / "run", "masking.strategy": "mixed", "masking.ratio": 0.3}
        base.update(extra)
        return [f"{k}={v}" for k, v in base.items()]
    return make


def read_losses(run: Path) -> dict[int, float]:
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
