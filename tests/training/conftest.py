"""Fixtures for training tests: the small legal corpus (tests/conftest.py) prepared into shards."""

from __future__ import annotations

from pathlib import Path

import pytest


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
        base = {
            "data.shards": legal_shards,
            "model.tokenizer": small_tokenizer,
            "model.preset": "bert-tiny",
            "data.max_len": 64,
            "data.eval_rows": 8,
            "train.batch_rows": 8,
            "train.steps": 12,
            "train.warmup_steps": 2,
            "train.lr": 2e-3,
            "train.log_every": 1,
            "train.eval_every": 6,
            "train.save_every": 4,
            "train.progress": False,
            "train.device": "cpu",
            "train.out_dir": out or tmp_path / "run",
            "masking.strategy": "mixed",
            "masking.ratio": 0.3,
        }
        base.update(extra)
        return [f"{k}={v}" for k, v in base.items()]

    return make
