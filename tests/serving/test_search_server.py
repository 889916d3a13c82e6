"""/v1/search on a real server (a subprocess on loopback) over an index of 40 real BBC openings built with bert-tiny:
answers equal `index_search` on the same index, k and return_documents are honoured, bad input is a 4xx after which
the server keeps serving, an index of another model stops the server at startup with one line, and an `embed` run
is served with its own pooling and Matryoshka width (equal to `load_embedder(RUN)`)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.index.embedder import load_embedder
from encoderforge.model import checkpoint
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.index_build import index_build, index_search
from encoderforge.serving.model import load_served
from encoderforge.serving.search import check_index

pytest.importorskip("faiss")

QUERIES = ["oil prices and the economy", "the football team won the match", "a new film opens this week"]


def post(server, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=60, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bbc_rows) -> Path:
    """40 real BBC openings as an index-build corpus (id, text, topic as metadata)."""
    path = tmp_path_factory.mktemp("search") / "corpus.jsonl"
    rows = [{"id": f"bbc-{n}", "text": text, "topic": topic} for n, (topic, text) in enumerate(bbc_rows[:40])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dense_index(corpus: Path, tiny_model: Path) -> Path:
    return index_build(corpus, corpus.parent / "ix", model=str(tiny_model), kind="flat", threads=1).out


@pytest.fixture(scope="module")
def server(start_server, tiny_model: Path, dense_index: Path):
    return start_server(tiny_model, "--index", str(dense_index), "--max-items", "16", "--max-chars", "2000")


def assert_same(got: list[dict], want: list) -> None:
    """One query's hits equal index_search's rows: ids in order, ranks, scores to 1e-5."""
    assert [h["id"] for h in got] == [w.id for w in want]
    assert [h["rank"] for h in got] == [w.rank for w in want]
    np.testing.assert_allclose([h["score"] for h in got], [w.score for w in want], atol=1e-5)


def test_search_equals_index_search(server, dense_index: Path, corpus: Path) -> None:
    want = index_search(dense_index, QUERIES, k=5)
    r = post(server, "/v1/search", json={"query": QUERIES, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == {"kind": "flat", "count": 40} and body["model"] == "bert-tiny"
    assert len(body["results"]) == len(QUERIES)
    texts = {row["id"]: row for row in map(json.loads, corpus.read_text(encoding="utf-8").splitlines())}
    for q, hits in enumerate(body["results"]):
        assert_same(hits, [w for w in want if w.query == str(q + 1)])
        for h in hits:  # the stored text and the rest of the metadata come back
            assert h["text"] == texts[h["id"]]["text"] and h["metadata"] == {"topic": texts[h["id"]]["topic"]}
    one = post(server, "/v1/search", json={"query": QUERIES[1], "k": 5}).json()  # a single string
    assert_same(one["results"][0], [w for w in want if w.query == "2"])


def test_concurrent_searches_are_batched_and_still_exact(server, dense_index: Path) -> None:
    queries = [f"{q} number {n}" for n in range(4) for q in QUERIES]
    want = index_search(dense_index, queries, k=3)

    def one(n: int) -> list[dict]:
        r = post(server, "/v1/search", json={"query": queries[n], "k": 3})
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(len(queries))))
    for n, hits in enumerate(got):
        assert_same(hits, [w for w in want if w.query == str(n + 1)])


def test_k_and_return_documents(server) -> None:
    r = post(server, "/v1/search", json={"query": QUERIES[0], "k": 1}).json()
    assert len(r["results"][0]) == 1
    r = post(server, "/v1/search", json={"query": QUERIES[0], "k": 100}).json()
    assert len(r["results"][0]) == 40  # k beyond the index: every document, once
    assert len({h["id"] for h in r["results"][0]}) == 40
    default = post(server, "/v1/search", json={"query": QUERIES[0]}).json()["results"][0]
    assert len(default) == 10
    bare = post(server, "/v1/search", json={"query": QUERIES[0], "return_documents": False}).json()["results"][0]
    assert all(set(h) == {"id", "score", "rank"} for h in bare)
    assert [h["id"] for h in bare] == [h["id"] for h in default]


BAD = [
    ("empty list", {"query": []}, 400, "query is empty"),
    ("empty string", {"query": ""}, 400, "query is blank"),
    ("blank", {"query": ["ok", "   "]}, 400, "query is blank"),
    ("k = 0", {"query": "a", "k": 0}, 422, "k:"),
    ("k = 101", {"query": "a", "k": 101}, 422, "k:"),
    ("k not a number", {"query": "a", "k": "ten"}, 422, "k:"),
    ("query not text", {"query": 5}, 422, "query"),
    ("unknown field", {"query": "a", "top_k": 3}, 422, "top_k"),
    ("too many queries", {"query": ["a"] * 17}, 413, "17 inputs > max 16"),
    ("too many characters", {"query": "a" * 3000, "truncate": False}, 413, "query[0] has 3000 characters > max 2000"),
    ("too many tokens", {"query": "word " * 300, "truncate": False}, 400, "longer than the index's 128 tokens"),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(server, case, body, status, message) -> None:
    r = post(server, "/v1/search", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["code"] == str(status), err
    assert post(server, "/v1/search", json={"query": "still here", "k": 2}).status_code == 200


def test_long_queries_are_cut_like_the_index_cuts_documents(server, dense_index: Path) -> None:
    long = " ".join(["the economy grew while oil prices fell"] * 40)  # > 128 tokens, < 2000 characters
    r = post(server, "/v1/search", json={"query": long, "k": 5})
    assert r.status_code == 200, r.text
    assert_same(r.json()["results"][0], index_search(dense_index, [long], k=5))


def test_health_metrics_and_openapi_list_search(server) -> None:
    assert "/v1/search" in httpx.get(f"{server.url}/health").json()["endpoints"]
    post(server, "/v1/search", json={"query": "count me"})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'encoderforge_requests_total{endpoint="/v1/search",status="200"}' in text
    assert "encoderforge_index_search_seconds_count" in text
    declared = httpx.get(f"{server.url}/openapi.json").json()["paths"]["/v1/search"]["post"]["responses"]
    assert {"200", "400", "413", "422", "429", "503"} <= set(declared)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, minilm_path: Path) -> Path:
    """Another bert-tiny (other random weights): same shape, different vectors."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other") / "bert-tiny-b"
    checkpoint.save(Encoder(preset("bert-tiny", vocab_size=30522, max_position=128)), path, tokenizer_dir=minilm_path)
    return path


def test_an_index_of_another_model_refuses_to_start(tiny_model: Path, other_model: Path, corpus: Path) -> None:
    other_ix = index_build(corpus, corpus.parent / "ix-other", model=str(other_model), kind="flat", threads=1).out
    # the check runs before the port is bound: any port will do, the server never listens
    cmd = [sys.executable, "-m", "encoderforge", "serve", str(tiny_model), "--index", str(other_ix),
           "--port", "1", "--threads", "1"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert f"--index {other_ix}" in line and str(other_model.resolve()) in line and str(tiny_model.resolve()) in line
    assert "model_hash" in line and f"encoderforge index build CORPUS {other_ix} --model {tiny_model.resolve()}" in line


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory, tiny_model: Path) -> Path:
    """An `embed` run directory as `finetune embed` writes it (RUN/model + task.json), with CLS pooling and a
    Matryoshka width of 64: the weights are bert-tiny's (training is not what is tested here)."""
    run = tmp_path_factory.mktemp("embed") / "tiny-embed"
    shutil.copytree(tiny_model, run / "model")
    meta = {"kind": "embed", "max_length": 64, "pooling": "cls", "normalize": True, "dims": 64,
            "matryoshka_dims": [128, 64], "matryoshka_layers": [], "loss": "mnrl"}  # fmt: skip
    (run / "task.json").write_text(json.dumps(meta), encoding="utf-8")
    return run


def test_an_embed_run_is_served_with_its_pooling_and_dims(start_server, embed_run: Path, bbc_rows) -> None:
    texts = [text[:300] for _, text in bbc_rows[:4]] + ["short"]
    want = load_embedder(embed_run).embed(texts)
    assert want.shape == (5, 64)
    server = start_server(embed_run)
    r = post(server, "/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    mean = load_embedder(embed_run / "model", pooling="mean", max_length=64, dims=64).embed(texts)
    assert np.abs(got - mean).max() > 1e-2  # CLS is not mean: the run's pooling is really the one used
    assert post(server, "/v1/embeddings", json={"input": "a", "dimensions": 65}).status_code == 400
    health = httpx.get(f"{server.url}/health").json()
    assert health["task"] == "embed" and "/v1/search" not in health["endpoints"]
    assert post(server, "/v1/search", json={"query": "a"}).status_code == 404  # no --index: no route


def test_an_embed_runs_index_matches_its_server_and_a_plain_one_does_not(
    embed_run: Path, dense_index: Path, corpus: Path
) -> None:
    served = load_served(embed_run)
    run_ix = index_build(corpus, corpus.parent / "ix-run", model=str(embed_run), threads=1).out
    assert check_index(run_ix, served).embed.dims == 64  # type: ignore[union-attr]
    # dense_index holds bert-tiny's very weights (the same hash) but mean-pooled at 128 dims: refused all the same
    with pytest.raises(EncoderforgeError, match=r"differs in dim 128 vs 64, pooling mean vs cls, dims None vs 64"):
        check_index(dense_index, served)


def test_a_rotated_run_is_served_rotated_and_its_index_refuses_the_unrotated_one(
    start_server, embed_run: Path, corpus: Path, bbc_rows
) -> None:
    from encoderforge.recipes.index_rotate import index_rotate

    rot = index_rotate(embed_run, corpus, corpus.parent / "tiny-embed-rot", dims=32, threads=1).out
    texts = [text[:300] for _, text in bbc_rows[:4]]
    want = load_embedder(rot).embed(texts)
    plain = load_embedder(embed_run, dims=32).embed(texts)
    assert want.shape == (4, 32) and np.abs(want - plain).max() > 1e-2  # the rotation changes the cut vectors
    server = start_server(rot)
    r = post(server, "/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32), want, atol=1e-5)
    served = load_served(rot)
    assert check_index(index_build(corpus, corpus.parent / "ix-rot", model=str(rot), threads=1).out, served)
    unrotated = index_build(corpus, corpus.parent / "ix-unrot", model=str(embed_run), threads=1).out
    with pytest.raises(EncoderforgeError, match=r"model_hash"):
        check_index(unrotated, served)


def test_a_bm25_index_under_two_workers(start_server, tiny_model: Path, corpus: Path) -> None:
    pytest.importorskip("bm25s")
    ix = index_build(corpus, corpus.parent / "ix-bm25", kind="bm25").out
    server = start_server(tiny_model, "--index", str(ix), "--workers", "2")
    want = index_search(ix, QUERIES, k=4)
    for _ in range(4):  # several requests: both workers loaded the index and answer alike
        body = post(server, "/v1/search", json={"query": QUERIES, "k": 4}).json()
        assert body["index"] == {"kind": "bm25", "count": 40}
        for q, hits in enumerate(body["results"]):
            assert_same(hits, [w for w in want if w.query == str(q + 1)])
