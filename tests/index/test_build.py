"""Corpus -> index builds: shards resume after SIGKILL without re-embedding, the result equals an uninterrupted
build, bad corpus lines are `FILE:LINE:` errors with the fix, and BM25 saves/loads/searches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.index.bm25 import BM25Index
from encoderforge.index.build import add_documents, build_index
from encoderforge.index.dense import DenseIndex

KILLER = textwrap.dedent(
    """
    import sys, time
    from encoderforge.index import build
    from encoderforge.index.embedder import load_embedder
    real = build.write_shard
    def stall(partial, s, *a):  # shard 0 and its progress marker are done: stall until the parent kills us
        if s == 1:
            print("SHARD-0", flush=True)
            time.sleep(60)
        real(partial, s, *a)
    build.write_shard = stall
    build.build_index(sys.argv[1], sys.argv[2], load_embedder(sys.argv[3]), shard_size=16)
    """
)


def test_killed_build_resumes_without_reembedding(tmp_path, corpus_file, tiny_model, tiny_embedder):
    out = tmp_path / "ix"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(corpus_file), str(out), str(tiny_model)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "SHARD-0"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (out / "manifest.json").exists()  # nothing looks complete
    assert json.loads((out / ".partial" / "progress.json").read_text())["done"] == 1
    resumed = build_index(corpus_file, out, tiny_embedder, shard_size=16)
    assert (resumed.shards, resumed.shards_embedded) == (4, 3)  # 60 docs / 16: shard 0 was not embedded again
    fresh = build_index(corpus_file, tmp_path / "fresh", tiny_embedder, shard_size=16)
    assert fresh.shards_embedded == 4 and not (out / ".partial").exists()
    a, b = DenseIndex.load(out), DenseIndex.load(tmp_path / "fresh")
    assert list(a.iid) == list(b.iid) and a.meta == b.meta
    # the killed process embedded shard 0 with the GEMM kernel measured fastest for ITS thread count (the engine's
    # choice, encoderforge.hardware), which may differ from this process's: equal up to float rounding, not bitwise
    np.testing.assert_allclose(a.reconstruct(list(a.iid)), b.reconstruct(list(b.iid)), rtol=0, atol=1e-6)


def test_build_search_and_add(tmp_path, corpus_file, bbc_docs, tiny_embedder, write_jsonl):
    out = tmp_path / "ix"
    r = build_index(corpus_file, out, tiny_embedder, shard_size=25)
    assert (r.count, r.kind, r.shards) == (60, "flat", 3)
    idx = DenseIndex.load(out)
    assert idx.spec == tiny_embedder.spec and idx.meta["bbc-005"] == {"topic": bbc_docs[5]["topic"], "text": bbc_docs[5]["text"]}
    q = tiny_embedder.embed([bbc_docs[7]["text"]])
    assert idx.search(q, k=1).ids == [["bbc-007"]]  # a document's own text finds it
    with pytest.raises(EncoderforgeError, match="already holds an index; pass --overwrite"):
        build_index(corpus_file, out, tiny_embedder)
    extra = write_jsonl(tmp_path / "more.jsonl", [{"id": "new-1", "text": "Shares in the bank rose sharply."}])
    assert add_documents(out, extra, tiny_embedder) == 1
    assert len(DenseIndex.load(out)) == 61
    with pytest.raises(EncoderforgeError, match=r"more.jsonl:1: id 'new-1' is already in .*index delete"):
        add_documents(out, extra, tiny_embedder)


BAD = [
    ('{"id": "a", "text": "ok"}\nnot json\n', r"corpus.jsonl:2: not valid JSON .*one JSON object .* per line"),
    ('{"id": "a", "text": "ok"}\n{"text": "no id"}\n', r"corpus.jsonl:2: \"id\" is missing; give every corpus line"),
    ('{"id": "a", "text": "ok"}\n\n{"id": "b", "text": "  "}\n', r"corpus.jsonl:3: \"text\" of 'b' is empty; give it"),
    (
        '{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n',
        r"corpus.jsonl:2: duplicate id 'a' \(first on line 1\); make ids unique",
    ),
    ('{"id": 7, "text": "x"}\n', r"corpus.jsonl:1: \"id\" is 7 \(int\); give every corpus line a non-empty string id"),
]


@pytest.mark.parametrize("body,msg", BAD)
def test_bad_corpus_lines(tmp_path, tiny_embedder, body, msg):
    f = tmp_path / "corpus.jsonl"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(EncoderforgeError, match=msg) as e:
        build_index(f, tmp_path / "ix", tiny_embedder)
    assert "\n" not in str(e.value) and not (tmp_path / "ix").exists()  # validated before anything is written


def test_bm25_build_save_load_search(tmp_path, corpus_file, bbc_docs):
    r = build_index(corpus_file, tmp_path / "bm", None, kind="bm25")
    assert (r.kind, r.count) == ("bm25", 60)
    bm = BM25Index.load(tmp_path / "bm")
    doc = bbc_docs[11]
    hits = bm.search([doc["text"], "zzzqqq the"], k=5)
    assert hits.ids[0][0] == "bbc-011" and hits.scores[0] == sorted(hits.scores[0], reverse=True)
    assert hits.ids[1] == []  # unknown words and stopwords match nothing
    assert bm.meta[11]["topic"] == doc["topic"]
    vocab = next((tmp_path / "bm" / "bm25").glob("vocab.index.json"))
    vocab.write_text(vocab.read_text()[:-5] + "}", encoding="utf-8")
    with pytest.raises(EncoderforgeError, match=r"vocab.index.json: checksum differs .*rebuild with `encoderforge index build`"):
        BM25Index.load(tmp_path / "bm")


def test_bf16_build_keeps_the_fp32_neighbours_or_refuses_on_a_cpu_without_bf16(tmp_path, corpus_file, tiny_model):
    from encoderforge.inference.precision import native_bf16
    from encoderforge.recipes.index_build import index_build

    with pytest.raises(EncoderforgeError, match=r"^precision='fp16': choose one of fp32, bf16, auto"):
        index_build(corpus_file, tmp_path / "bad", model=str(tiny_model), precision="fp16")  # type: ignore[arg-type]
    if not native_bf16():
        with pytest.raises(EncoderforgeError, match=r"has no AVX512-BF16 or AMX"):
            index_build(corpus_file, tmp_path / "bf16", model=str(tiny_model), precision="bf16")
        assert not (tmp_path / "bf16").exists()
        return
    fp32 = index_build(corpus_file, tmp_path / "fp32", model=str(tiny_model))
    bf16 = index_build(corpus_file, tmp_path / "bf16", model=str(tiny_model), precision="bf16")
    assert (fp32.precision, bf16.precision, bf16.note) == ("fp32", "bf16", "")
    a, b = DenseIndex.load(tmp_path / "fp32"), DenseIndex.load(tmp_path / "bf16")
    ids = list(a.iid)
    va, vb = a.reconstruct(ids), b.reconstruct(ids)
    assert float(np.sum(va * vb, axis=1).min()) >= 0.99  # the engine's fidelity gate, per document
    assert b.search(va[:5], 1).ids == [[i] for i in ids[:5]]  # each document is still its own nearest neighbour
