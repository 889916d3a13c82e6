"""`encoderforge index build|add|delete|search` through Typer's CliRunner: the happy path, and a table of bad inputs
that each exit non-zero with one `error:` line naming the file or id and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from encoderforge.cli.app import app
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder

runner = CliRunner()


def ok(argv: list[str]) -> str:
    r = runner.invoke(app, [str(a) for a in argv])
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory, bbc_docs, tiny_model, minilm_path) -> dict[str, Path]:
    """A corpus, an index of it built by the CLI with the tiny model, and two other models (other weights; other dim)."""
    d = tmp_path_factory.mktemp("cli")
    (d / "corpus.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in bbc_docs[:40]), encoding="utf-8")
    out = ok(["index", "build", d / "corpus.jsonl", d / "ix", "--model", tiny_model, "--shard-size", "16"])
    assert "indexed 40 documents (flat)" in out
    torch.manual_seed(1)
    checkpoint.save(Encoder(preset("bert-tiny", vocab_size=30522, max_position=128)), d / "other", tokenizer_dir=minilm_path)
    small = preset("bert-tiny", vocab_size=30522, max_position=128, hidden_size=64, intermediate_size=256)
    checkpoint.save(Encoder(small), d / "narrow", tokenizer_dir=minilm_path)
    return {"dir": d, "ix": d / "ix", "corpus": d / "corpus.jsonl", "other": d / "other", "narrow": d / "narrow"}


@pytest.fixture
def ix(built, tmp_path) -> Path:
    """A fresh copy of the built index (tests mutate it)."""
    shutil.copytree(built["ix"], tmp_path / "ix")
    return tmp_path / "ix"


def test_build_search_add_delete_batch(ix, built, bbc_docs, tmp_path, write_jsonl):
    doc = bbc_docs[3]
    out = ok(["index", "search", ix, doc["text"], "-k", "3"])
    first = out.splitlines()[0]
    assert first.split()[:1] == ["1"] and "bbc-003" in first and doc["text"][:30] in first and doc["topic"] in first
    assert len(out.splitlines()) == 3
    write_jsonl(tmp_path / "new.jsonl", [{"id": "n1", "text": "The central bank raised interest rates again."}])
    assert "added 1 documents" in ok(["index", "add", ix, tmp_path / "new.jsonl"])
    assert "n1" in ok(["index", "search", ix, "The central bank raised interest rates again.", "-k", "1"])
    assert "deleted 2 documents" in ok(["index", "delete", ix, "n1", "bbc-003"])
    q = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "text": doc["text"]}, {"id": "q2", "text": bbc_docs[5]["text"]}])
    ok(["index", "search", ix, "--queries", q, "--out", tmp_path / "run.tsv", "-k", "2"])
    rows = [line.split("\t") for line in (tmp_path / "run.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == ["q1", "q1", "q2", "q2"] and rows[2][1:3] == ["bbc-005", "1"]
    assert "bbc-003" not in {r[1] for r in rows}  # deleted


def test_bm25_index_via_cli(built, tmp_path, bbc_docs):
    ok(["index", "build", built["corpus"], tmp_path / "bm", "--kind", "bm25"])
    assert "bbc-007" in ok(["index", "search", tmp_path / "bm", bbc_docs[7]["text"], "-k", "1"])


def corrupt(ix: Path) -> None:
    data = (ix / "index.faiss").read_bytes()
    (ix / "index.faiss").write_bytes(data[:-4] + b"\x00\x01\x02\x03")


CASES = [  # (id, setup(ix, built, tmp), argv, substrings the one-line error must hold)
    (
        "other-model",
        None,
        ["index", "search", "{ix}", "hello", "--model", "{other}"],
        ["but the query uses", "model_hash", "rebuild"],
    ),
    ("other-dim", None, ["index", "search", "{ix}", "hello", "--model", "{narrow}"], ["dim 128 vs 64", "omit --model"]),
    (
        "other-pooling",
        None,
        ["index", "search", "{ix}", "hello", "--pooling", "cls"],
        ["pooling mean vs cls", "omit --model/--pooling"],
    ),
    (
        "missing-file",
        lambda ix: (ix / "ids.jsonl").unlink(),
        ["index", "search", "{ix}", "hello"],
        ["ids.jsonl: missing", "rebuild with `encoderforge index build`"],
    ),
    ("corrupt-file", corrupt, ["index", "search", "{ix}", "hello"], ["index.faiss: checksum differs", "rebuild with"]),
    (
        "no-manifest",
        lambda ix: (ix / "manifest.json").unlink(),
        ["index", "search", "{ix}", "hello"],
        ["manifest.json: missing", "rebuild with"],
    ),
    ("add-duplicate", None, ["index", "add", "{ix}", "{corpus}"], ["corpus.jsonl:1: id 'bbc-000' is already in", "index delete"]),
    ("delete-unknown", None, ["index", "delete", "{ix}", "bbc-001", "nope-9"], ["'nope-9' is not in the index", "check the id"]),
    (
        "empty-text",
        None,
        ["index", "build", "{dir}/empty.jsonl", "{dir}/ix2", "--model", "{other}"],
        ["empty.jsonl:2:", "\"text\" of 'b' is empty", "drop the line"],
    ),
    (
        "build-over-index",
        None,
        ["index", "build", "{corpus}", "{ix}", "--model", "{other}"],
        ["already holds an index", "--overwrite"],
    ),
    ("no-query", None, ["index", "search", "{ix}"], ["pass one query text", "--queries"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs_are_one_line_errors(case, ix, built, tmp_path):
    _, setup, argv, needles = case
    (tmp_path / "empty.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ""}\n', encoding="utf-8")
    if setup:
        setup(ix)
    paths = {"ix": ix, "dir": tmp_path, "corpus": built["corpus"], "other": built["other"], "narrow": built["narrow"]}
    r = runner.invoke(app, [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv])
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], lines[0]
