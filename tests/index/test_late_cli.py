"""A ColBERT run through the index CLI: `index build --model COLBERT_RUN` makes the compressed late-interaction index,
`index search` and `eval-retrieval` query it with the run's own token vectors, and what a late index cannot do (add,
delete, another model, a dense --kind) is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.app import app
from encoderforge.index.late_model import load_late_embedder
from encoderforge.index.retrievers import LateRetriever, open_index
from encoderforge.tasks.colbert import maxsim

runner = CliRunner()


def ok(argv: list) -> str:
    r = runner.invoke(app, [str(a) for a in argv])
    assert r.exit_code == 0, r.output
    return r.stdout


def fails(argv: list) -> str:
    r = runner.invoke(app, [str(a) for a in argv])
    assert r.exit_code != 0 and r.output.count("\n") <= 1, r.output
    return r.output


@pytest.fixture(scope="module")
def late(tmp_path_factory, tiny_model, bbc_docs):
    """A tiny ColBERT run fine-tuned on (first sentence -> article) pairs, and a CLI-built index of 40 articles."""
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    d = tmp_path_factory.mktemp("late")
    docs = bbc_docs[:40]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs), encoding="utf-8")
    pairs = [{"query": x["text"].split(".")[0], "positive": x["text"]} for x in docs]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    values = {"model": str(tiny_model), "train.out_dir": str(d / "run"), "data.train": str(d / "pairs.jsonl"),
              "data.dev": str(d / "pairs.jsonl"), "finetune.max_length": 64, "finetune.epochs": 1, "train.batch_rows": 8}  # fmt: skip
    finetune(finetune_config("colbert", values=values))
    out = ok(["index", "build", d / "corpus.jsonl", d / "ix", "--model", d / "run"])
    assert "indexed 40 documents (colbert)" in out
    qs = [{"id": f"q{i}", "text": p["query"]} for i, p in enumerate(pairs[::4])]
    (d / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs), encoding="utf-8")
    (d / "qrels.tsv").write_text("".join(f"q{i}\t{docs[4 * i]['id']}\t1\n" for i in range(len(qs))), encoding="utf-8")
    return d, docs, pairs


def test_build_and_search_with_the_runs_own_token_vectors(late):
    d, docs, pairs = late
    r = open_index(d / "ix")
    assert isinstance(r, LateRetriever) and r.index.spec is not None and r.index.spec.pooling == "tokens"
    assert r.meta[docs[0]["id"]]["text"] == docs[0]["text"]  # texts stored, as for dense indexes
    emb = load_late_embedder(d / "run")
    q = pairs[0]["query"]
    hits = r.search([q], 5)
    # every centroid probed and every document kept: the compressed index ranks as exact MaxSim over float vectors
    full = r.index.search(emb.encode([q]), 5, nprobe=r.index.nlist, ndocs=len(docs))
    qv, dv = emb.encode([q])[0], emb.encode([x["text"] for x in docs])
    exact = [float((qv @ m.T).max(axis=1).sum()) for m in dv]
    assert full.ids[0][0] == docs[int(np.argmax(exact))]["id"]
    assert np.allclose(full.scores[0][0], max(exact), atol=2e-2)
    printed = ok(["index", "search", d / "ix", q, "-k", "3"])
    assert [line.split()[2] for line in printed.splitlines()] == hits.ids[0][:3]


def test_maxsim_kernel_agrees_with_the_direct_sum(late):
    d, docs, pairs = late
    emb = load_late_embedder(d / "run")
    qv, dv = emb.encode([pairs[1]["query"]])[0], emb.encode([docs[1]["text"]])[0]
    import torch

    got = maxsim(
        torch.tensor(qv)[None],
        torch.ones(1, len(qv), dtype=torch.bool),
        torch.tensor(dv)[None],
        torch.ones(1, len(dv), dtype=torch.bool),
    )
    assert float(got[0, 0]) == pytest.approx(float((qv @ dv.T).max(axis=1).sum()), abs=1e-4)


def test_eval_retrieval_on_a_colbert_index(late, tmp_path):
    d, _, _ = late
    ok(
        [
            "eval-retrieval",
            "--queries",
            d / "queries.jsonl",
            "--qrels",
            d / "qrels.tsv",
            "--index",
            d / "ix",
            "--out",
            tmp_path / "ev",
            "-k",
            "10",
        ]
    )
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["retriever"].startswith("colbert late interaction") and 0 < m["test"]["ndcg@10"] <= 1


def test_what_a_late_index_refuses(late, tiny_model, tmp_path):
    d, docs, _ = late
    assert "ColBERT index cannot grow in place" in fails(["index", "add", d / "ix", d / "corpus.jsonl"])
    assert "ColBERT index cannot delete in place" in fails(["index", "delete", d / "ix", docs[0]["id"]])
    assert "is a ColBERT run, indexed per token" in fails(
        ["index", "build", d / "corpus.jsonl", tmp_path / "h", "--model", d / "run", "--kind", "hnsw"]
    )
    assert "--kind colbert needs a `finetune colbert` run" in fails(
        ["index", "build", d / "corpus.jsonl", tmp_path / "c", "--model", tiny_model, "--kind", "colbert"]
    )
    assert not (tmp_path / "h").exists() and not (tmp_path / "c").exists()
    with pytest.raises(EncoderforgeError, match=r"not a `finetune colbert` run"):
        open_index(d / "ix", model=str(tiny_model))
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    values = {"model": str(tiny_model), "train.out_dir": str(tmp_path / "run2"), "data.train": str(d / "pairs.jsonl"),
              "data.dev": str(d / "pairs.jsonl"), "finetune.max_length": 64, "finetune.epochs": 1, "train.batch_rows": 8, "train.seed": 1}  # fmt: skip
    finetune(finetune_config("colbert", values=values))  # another ColBERT run: other weights
    with pytest.raises(EncoderforgeError, match=r"differs in model_hash") as e:
        open_index(d / "ix", model=str(tmp_path / "run2"))
    assert "\n" not in str(e.value)
    assert "already holds an index" in fails(["index", "build", d / "corpus.jsonl", d / "ix", "--model", d / "run"])


def test_a_killed_colbert_build_resumes_at_its_first_unfinished_shard(late, tmp_path):
    """Token vectors go to .partial/ shard by shard (with their counts): a build that dies after its first shard
    leaves nothing that looks complete, and the rerun encodes only the rest and equals an uninterrupted build."""
    from encoderforge.index.late import LateIndex
    from encoderforge.index.late_model import build_late

    d, _, _ = late
    emb = load_late_embedder(d / "run")
    real, calls = emb.encode, []

    def dies_after_one_shard(texts):
        if calls:
            raise KeyboardInterrupt  # the process is stopped while encoding its second shard
        calls.append(len(texts))
        return real(texts)

    emb.encode = dies_after_one_shard  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        build_late(d / "corpus.jsonl", tmp_path / "ix", emb, shard_size=16)
    assert not (tmp_path / "ix" / "manifest.json").exists() and calls == [16]
    assert json.loads((tmp_path / "ix" / ".partial" / "progress.json").read_text())["done"] == 1
    emb.encode = real  # type: ignore[method-assign]
    resumed = build_late(d / "corpus.jsonl", tmp_path / "ix", emb, shard_size=16)
    assert (resumed.count, resumed.shards, resumed.shards_embedded) == (40, 3, 2)  # shard 0 was not encoded again
    assert not (tmp_path / "ix" / ".partial").exists()
    build_late(d / "corpus.jsonl", tmp_path / "fresh", emb, shard_size=16)
    a, b = LateIndex.load(tmp_path / "ix"), LateIndex.load(tmp_path / "fresh")
    assert a.ids == b.ids and a.meta_rows == b.meta_rows
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_a_colbert_build_compresses_shard_by_shard_from_a_token_sample(late, tmp_path):
    """The codec (centroids + residual ranges) is trained on at most `train_tokens` token vectors drawn from the
    shards, then each shard is encoded on its own, so the float vectors of the whole corpus are never in memory at
    once. With a sample as large as the corpus the index equals LateIndex.build over every token matrix; with a
    smaller one it still finds what exhaustive MaxSim finds."""
    from encoderforge.index.late import LateIndex
    from encoderforge.index.late_model import build_late

    d, docs, pairs = late
    emb = load_late_embedder(d / "run")
    texts = [x["text"] for x in docs]
    mats = [m for i in range(0, len(texts), 16) for m in emb.encode(texts[i : i + 16])]  # as the build's shards
    total = sum(len(m) for m in mats)
    whole = build_late(d / "corpus.jsonl", tmp_path / "all", emb, shard_size=16, train_tokens=total)
    ref = LateIndex.build([x["id"] for x in docs], mats, spec=emb.spec)
    got = LateIndex.load(whole.out)
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_array_equal(got.codes, ref.codes)
    assert got.params["train_tokens"] == total and got.nlist == ref.nlist
    small = LateIndex.load(build_late(d / "corpus.jsonl", tmp_path / "few", emb, shard_size=16, train_tokens=400).out)
    assert small.params["train_tokens"] == 400 and small.nlist <= 400 // 39
    np.testing.assert_array_equal(small.offsets, ref.offsets)
    queries = emb.encode([p["query"] for p in pairs[::4]])
    exact = [ids[0] for ids in small.search(queries, k=1, nprobe=small.nlist, ndocs=len(small)).ids]
    assert [ids[0] for ids in small.search(queries, k=1).ids] == exact
    with pytest.raises(EncoderforgeError, match="train_tokens must be >= 39"):
        build_late(d / "corpus.jsonl", tmp_path / "bad", emb, shard_size=16, train_tokens=10)
    with pytest.raises(EncoderforgeError, match="bits must be 4 or 8, got 3"):  # before any shard is encoded
        build_late(d / "corpus.jsonl", tmp_path / "bad", emb, shard_size=16, bits=3)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()
