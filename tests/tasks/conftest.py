"""Fixtures for fine-tuning tests: a randomly initialised bert-tiny checkpoint that uses MiniLM's real tokenizer
(fast), and small real labelled sets (BBC News, WNUT-16, licensedcode rules)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def ft_config():
    """A fine-tuning config for a test run: task, start model, run directory, then dotted keys as the CLI sets them
    (recipes.finetune_config.finetune_config)."""
    from encoderforge.recipes.finetune_config import finetune_config

    def make(task: str, model: Path, out: Path, values: dict | None = None):
        return finetune_config(task, values={"model": str(model), "train.out_dir": str(out), **(values or {})})

    return make


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


@pytest.fixture(scope="session")
def license_rule_rows() -> list[tuple[str, list[str]]]:
    """Real multi-label examples: licensedcode rule texts labelled with the license keys their license_expression
    names, restricted to five frequent keys (60 rules, a third of them naming two or more keys)."""
    from encoderforge.data.datasets import pkg_file

    keys = {"mit", "apache-2.0", "gpl-2.0", "bsd-new", "lgpl-2.1"}
    rules = sorted(pkg_file("licensedcode-data", "mit.LICENSE").parent.parent.joinpath("rules").glob("*.RULE"))
    single, multi = [], []
    for p in rules:
        raw = p.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^license_expression:\s*(.+)$", raw, re.M)
        body = raw.split("---", 2)[-1].strip()
        if not m or not body:
            continue
        found = set(re.findall(r"[a-z0-9.+_-]+", m.group(1).lower())) - {"and", "or", "with"}
        if found and found <= keys:
            (multi if len(found) > 1 else single).append((body[:400], sorted(found)))
    return single[::37][:40] + multi[:20]
