"""Index test inputs: a real corpus (BBC article openings) as JSONL, and vectors from the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_jsonl():
    """write_jsonl(path, rows) -> path: one JSON object per line."""
    return _write_jsonl


@pytest.fixture(scope="session")
def bbc_docs(bbc_rows) -> list[dict]:
    """60 corpus rows {"id", "text", "topic"} from real BBC articles."""
    return [{"id": f"bbc-{i:03d}", "text": text[:300], "topic": topic} for i, (topic, text) in enumerate(bbc_rows[:60])]


@pytest.fixture
def corpus_file(tmp_path, bbc_docs) -> Path:
    return _write_jsonl(tmp_path / "corpus.jsonl", bbc_docs)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model):
    from encoderforge.index.embedder import load_embedder

    return load_embedder(tiny_model)
