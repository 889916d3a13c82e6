"""`encoderforge eval-retrieval` on a small judged set built from real BBC articles (query = an article's first
sentence; relevant = that article (2) and others of its topic (1)): metrics equal trec_eval on the written run,
queries without qrels are skipped, the run directory is what `encoderforge eval` lists, and a fine-tuned
cross-encoder re-ranks the top-K by its P("1")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.app import app
from encoderforge.eval.leaderboard import leaderboard
from encoderforge.recipes.eval_retrieval import eval_retrieval
from encoderforge.recipes.predict import Predictor

pytrec_eval = pytest.importorskip("pytrec_eval")


@pytest.fixture(scope="module")
def judged(tmp_path_factory, bbc_docs):
    d = tmp_path_factory.mktemp("judged")
    docs = bbc_docs[:40]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs), encoding="utf-8")
    qs = [{"id": f"q{i}", "text": docs[i]["text"].split(".")[0]} for i in range(0, 40, 4)]
    qs.append({"id": "unjudged", "text": "a query nobody judged"})
    (d / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs), encoding="utf-8")
    lines = []
    for i in range(0, 40, 4):
        for j, doc in enumerate(docs):
            if j == i or doc["topic"] == docs[i]["topic"]:
                lines.append(f"q{i}\t{doc['id']}\t{2 if j == i else 1}\n")
    (d / "qrels.tsv").write_text("".join(lines), encoding="utf-8")
    return d


def read_run(path):
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        q, doc, rank, _ = line.split("\t")
        run.setdefault(q, {})[doc] = -float(rank)  # scores that order exactly as our ranks
    return run


def check_against_trec_eval(out, judged):
    m = json.loads((out / "metrics.json").read_text())
    qrels = {}
    for line in (judged / "qrels.tsv").read_text().splitlines():
        q, doc, rel = line.split("\t")
        qrels.setdefault(q, {})[doc] = int(rel)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100"}).evaluate(read_run(out / "run.tsv"))
    scores: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "run.tsv").read_text().splitlines():  # the score column sorts like the ranks (trec_eval's order)
        q, _, rank, score = line.split("\t")
        scores.setdefault(q, []).append((int(rank), float(score)))
    for q, rs in scores.items():
        assert [s for _, s in sorted(rs)] == sorted((s for _, s in rs), reverse=True), q
    assert m["test"]["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-6)
    assert m["test"]["recall@10"] == pytest.approx(np.mean([v["recall_10"] for v in ref.values()]), abs=1e-6)
    assert m["test"]["recall@100"] == pytest.approx(np.mean([v["recall_100"] for v in ref.values()]), abs=1e-6)
    return m


def test_bm25_and_model_runs(judged, tiny_model, tmp_path):
    bm = eval_retrieval(
        judged / "queries.jsonl", judged / "qrels.tsv", tmp_path / "bm25", corpus=judged / "corpus.jsonl", bm25=True
    )
    m = check_against_trec_eval(tmp_path / "bm25", judged)
    assert (m["queries"], m["skipped_queries"], m["primary"]) == (10, 1, "ndcg@10")
    firsts = {
        q: doc
        for q, doc, rank, _ in (line.split("\t") for line in (tmp_path / "bm25" / "run.tsv").read_text().splitlines())
        if rank == "1"
    }
    assert sum(firsts[f"q{i}"] == f"bbc-{i:03d}" for i in range(0, 40, 4)) >= 8  # a first sentence finds its article
    assert m["latency_ms"]["p50"] > 0 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]
    assert bm.metrics["retriever"].startswith("bm25")
    dense = eval_retrieval(
        judged / "queries.jsonl", judged / "qrels.tsv", tmp_path / "dense", corpus=judged / "corpus.jsonl", model=str(tiny_model)
    )
    check_against_trec_eval(tmp_path / "dense", judged)
    assert "dense flat" in dense.metrics["retriever"]
    board = leaderboard([tmp_path])  # `encoderforge eval` reads these run directories
    assert {r["kind"] for r in board.rows} == {"retrieval"} and {r["primary"] for r in board.rows} == {"ndcg@10"}


def test_no_judged_query_is_an_error(judged, tmp_path):
    (tmp_path / "q.jsonl").write_text('{"id": "zz", "text": "x"}\n')
    with pytest.raises(EncoderforgeError, match="none of the 1 queries .* has judgements"):
        eval_retrieval(tmp_path / "q.jsonl", judged / "qrels.tsv", tmp_path / "o", corpus=judged / "corpus.jsonl", bm25=True)
    with pytest.raises(EncoderforgeError, match="exactly one retriever"):
        eval_retrieval(judged / "queries.jsonl", judged / "qrels.tsv", tmp_path / "o")


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory, tiny_model, bbc_docs):
    """A real fine-tuned pair classifier (labels "0"/"1": does this text continue this opening sentence?)."""
    from encoderforge.data.readers import Schema, from_records
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    docs = bbc_docs[:40]
    rows = [
        ((d["text"].split(".")[0], docs[(i + 1) % 40]["text"] if i % 2 else d["text"]), str(1 - i % 2))
        for i, d in enumerate(docs)
    ]
    schema = Schema(text_fields=("a", "b"))
    train, dev = from_records(rows[:32], schema, name="ce-train"), from_records(rows[32:], schema, name="ce-dev")
    out = tmp_path_factory.mktemp("ce") / "run"
    values = {
        "model": str(tiny_model),
        "train.out_dir": str(out),
        "data.text_field": ["a", "b"],
        "finetune.max_length": 64,
        "finetune.epochs": 1,
        "train.batch_rows": 16,
    }
    finetune(finetune_config("classify", values=values), train=train, dev=dev)
    return out


def test_rerank_with_a_cross_encoder_via_cli(judged, tiny_model, cross_encoder, tmp_path):
    ix = tmp_path / "ix"
    r = CliRunner().invoke(app, ["index", "build", str(judged / "corpus.jsonl"), str(ix), "--kind", "bm25"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "rr"
    argv = [
        "eval-retrieval",
        "--queries",
        str(judged / "queries.jsonl"),
        "--qrels",
        str(judged / "qrels.tsv"),
        "--index",
        str(ix),
        "--rerank",
        str(cross_encoder),
        "--rerank-depth",
        "5",
        "-k",
        "20",
        "--out",
        str(out),
    ]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    assert "ndcg@10" in r.stdout and "1 skipped" in r.stdout
    m = check_against_trec_eval(out, judged)
    assert m["rerank"] == {"run": str(cross_encoder), "depth": 5, "weight": 1.0}
    # the top 5 of each query are ordered by the cross-encoder's P("1"), the texts coming from the index (no --corpus)
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in (judged / "corpus.jsonl").read_text().splitlines()}
    query = {json.loads(line)["id"]: json.loads(line)["text"] for line in (judged / "queries.jsonl").read_text().splitlines()}
    rows = [line.split("\t") for line in (out / "run.tsv").read_text().splitlines() if line.startswith("q0\t")]
    top = [doc for doc, rank in ((r[1], int(r[2])) for r in rows) if rank <= 5]
    p = Predictor.load(cross_encoder).predict([f"{' '.join(query['q0'].split())}\t{' '.join(texts[d].split())}" for d in top])
    probs = [x["scores"]["1"] for x in p]
    assert probs == sorted(probs, reverse=True)
    r = CliRunner().invoke(app, [*argv[:-2], "--out", str(out)])  # exists: refused without --overwrite
    assert r.exit_code != 0 and "already exists; pass --overwrite" in r.stderr
    # both scores of every re-scored candidate are kept, in first-stage order; weight 0 gives back the first stage
    plain = tmp_path / "plain"
    assert CliRunner().invoke(app, [*argv[:7], "-k", "20", "--out", str(plain)]).exit_code == 0
    both = [line.split("\t") for line in (out / "rerank.tsv").read_text().splitlines()[1:]]
    assert len(both) == 5 * m["queries"]
    first = [(r[1], float(r[3])) for r in (x.split("\t") for x in (plain / "run.tsv").read_text().splitlines()) if r[0] == "q0"]
    assert [b[1] for b in both if b[0] == "q0"] == [d for d, _ in first[:5]]
    assert [float(b[2]) for b in both if b[0] == "q0"] == pytest.approx([s for _, s in first[:5]], abs=1e-5)
    assert sorted(float(b[3]) for b in both if b[0] == "q0") == pytest.approx(sorted(probs), abs=1e-5)
    zero = tmp_path / "w0"
    assert CliRunner().invoke(app, [*argv[:-2], "--rerank-weight", "0", "--out", str(zero)]).exit_code == 0
    assert _order(zero) == _order(plain)
    r = CliRunner().invoke(app, [*argv[:-2], "--rerank-weight", "1.5", "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "--rerank-weight must be in [0, 1]" in r.stderr and not (tmp_path / "bad").exists()


def test_a_reranked_top_keeps_the_tail_below_it_in_scores():
    from encoderforge.recipes.eval_retrieval import below

    top = [("a", 0.2), ("b", -1.0)]  # z-scored or probability scores of the re-ranked top
    assert below(top, [("c", 9.5), ("d", 7.0)]) == [("a", 0.2), ("b", -1.0), ("c", -2.0), ("d", -4.5)]
    assert below(top, [("c", -3.0)]) == [*top, ("c", -3.0)]  # already below: unchanged
    assert below([], [("c", 1.0)]) == [("c", 1.0)] and below(top, []) == top


def _order(run_dir):
    return [line.split("\t")[:3] for line in (run_dir / "run.tsv").read_text().splitlines()]


def test_dims_scores_on_the_first_coordinates(judged, tiny_model, tmp_path):
    """--dims 32 (Matryoshka) = the full vectors cut to 32 coordinates and re-normalised, searched exactly."""
    from encoderforge.index.embedder import load_embedder

    r = eval_retrieval(
        judged / "queries.jsonl", judged / "qrels.tsv", tmp_path / "d32", corpus=judged / "corpus.jsonl",
        model=str(tiny_model), dims=32,
    )  # fmt: skip
    assert r.metrics["dims"] == 32
    assert top5(tmp_path / "d32", judged) == exact_top5(load_embedder(str(tiny_model)), judged, dims=32)
    assert load_embedder(str(tiny_model), dims=32).spec.dim == 32
    with pytest.raises(EncoderforgeError, match="--dims: dims=999 must be in 1..128"):
        load_embedder(str(tiny_model), dims=999)


def exact_top5(embedder, judged, dims: int) -> list[str]:
    """The first query's top 5 by cosine on the first `dims` coordinates (re-normalised), computed directly."""
    docs = [json.loads(x) for x in (judged / "corpus.jsonl").read_text().splitlines()]
    q = [json.loads(x) for x in (judged / "queries.jsonl").read_text().splitlines()][0]
    cut = lambda v: v[:, :dims] / np.linalg.norm(v[:, :dims], axis=1, keepdims=True)  # noqa: E731
    scores = cut(embedder.embed([q["text"]])) @ cut(embedder.embed([d["text"] for d in docs])).T
    return [docs[i]["id"] for i in np.argsort(-scores[0], kind="stable")[:5]]


def top5(out, judged) -> list[str]:
    q = json.loads((judged / "queries.jsonl").read_text().splitlines()[0])["id"]
    return [line.split("\t")[1] for line in (out / "run.tsv").read_text().splitlines() if line.startswith(f"{q}\t")][:5]


def test_layers_embeds_with_the_first_layers_only(judged, tiny_model, tmp_path):
    """--layers 1 = an encoder cut to its first layer (a different model: its hash says so)."""
    from encoderforge.index.embedder import load_embedder

    one, full = load_embedder(str(tiny_model), layers=1), load_embedder(str(tiny_model))
    assert len(one.engine.encoder.layers) == 1 and one.spec.model_hash != full.spec.model_hash
    assert not np.allclose(one.embed(["a text"]), full.embed(["a text"]))
    r = eval_retrieval(
        judged / "queries.jsonl", judged / "qrels.tsv", tmp_path / "l1", corpus=judged / "corpus.jsonl",
        model=str(tiny_model), layers=1, dims=64,
    )  # fmt: skip
    assert r.metrics["layers"] == 1 and r.metrics["dims"] == 64
    assert top5(tmp_path / "l1", judged) == exact_top5(one, judged, dims=64)  # ranked by the one-layer model
    assert top5(tmp_path / "l1", judged) != exact_top5(full, judged, dims=64)  # not by the full one
    with pytest.raises(EncoderforgeError, match=r"^--layers cuts the encoder of --model"):
        eval_retrieval(judged / "queries.jsonl", judged / "qrels.tsv", tmp_path / "l2", corpus=judged / "corpus.jsonl",
                       bm25=True, layers=1)  # fmt: skip
    with pytest.raises(EncoderforgeError, match=r"--layers=5 must be in 1..2"):
        load_embedder(str(tiny_model), layers=5)


def test_rerank_weight_auto_is_chosen_on_dev_queries(judged, tiny_model, cross_encoder, tmp_path):
    from encoderforge.index.fusion import choose_weight
    from encoderforge.index.readers import read_qrels

    ix = tmp_path / "ix"
    assert CliRunner().invoke(app, ["index", "build", str(judged / "corpus.jsonl"), str(ix), "--kind", "bm25"]).exit_code == 0
    # dev = the first five judged queries, test = the other five (and the unjudged one)
    lines = (judged / "queries.jsonl").read_text().splitlines(keepends=True)
    dev_q, test_q = tmp_path / "dev.jsonl", tmp_path / "test.jsonl"
    dev_q.write_text("".join(lines[:5]), encoding="utf-8")
    test_q.write_text("".join(lines[5:]), encoding="utf-8")
    base = ["eval-retrieval", "--queries", str(test_q), "--qrels", str(judged / "qrels.tsv")]
    base += ["--index", str(ix), "--rerank", str(cross_encoder), "--rerank-depth", "10", "-k", "20"]
    dev = ["--dev-queries", str(dev_q), "--dev-qrels", str(judged / "qrels.tsv")]
    r = CliRunner().invoke(app, [*base, "--rerank-weight", "auto", *dev, "--out", str(tmp_path / "auto")])
    assert r.exit_code == 0, r.output
    assert "weight chosen on 5 dev queries" in r.stdout
    m = check_against_trec_eval(tmp_path / "auto", judged)
    cands: dict[str, list] = {}
    for line in (tmp_path / "auto" / "dev-rerank.tsv").read_text().splitlines()[1:]:
        q, d, a, b = line.split("\t")
        cands.setdefault(q, []).append((d, float(a), float(b)))
    assert sorted(cands) == ["q0", "q12", "q16", "q4", "q8"] and all(
        0 < len(c) <= 10 for c in cands.values()
    )  # BM25: matching docs only
    best, curve = choose_weight(cands, read_qrels(judged / "qrels.tsv"), ["q0", "q4", "q8", "q12", "q16"])
    assert m["rerank"]["weight"] == best and m["rerank"]["chosen_on"]["queries"] == 5
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["rerank_weight"] == best and config["rerank_weight_auto"] is True
    assert config["inputs"]["dev_queries"]["sha256"] and config["inputs"]["dev_qrels"]["path"] == str(judged / "qrels.tsv")
    assert m["rerank"]["chosen_on"]["ndcg@10"] == pytest.approx([n for _, n in curve], abs=1e-6)
    # each point of the curve is what eval-retrieval itself scores on the dev queries at that weight
    for w in (0.0, best):
        on_dev = tmp_path / f"dev-{w}"
        r = CliRunner().invoke(app, [*base[:2], str(dev_q), *base[3:], "--rerank-weight", str(w), "--out", str(on_dev)])
        assert r.exit_code == 0, r.output
        got = json.loads((on_dev / "metrics.json").read_text())["test"]["ndcg@10"]
        assert got == pytest.approx(dict(curve)[w], abs=1e-6)
    # the test run is the one an explicit --rerank-weight of that value gives
    r = CliRunner().invoke(app, [*base, "--rerank-weight", str(best), "--out", str(tmp_path / "fixed")])
    assert r.exit_code == 0, r.output
    assert _order(tmp_path / "auto") == _order(tmp_path / "fixed")
    # bad combinations: one-line errors, nothing written
    for extra, msg in [
        (["--rerank-weight", "auto"], "--rerank-weight auto chooses the weight on dev queries: pass --dev-queries"),
        ([*dev], "--dev-queries / --dev-qrels choose --rerank-weight auto"),
        (["--rerank-weight", "half"], "--rerank-weight must be a number in [0, 1] or auto, got 'half'"),
        (["--rerank-weight", "1.5"], "--rerank-weight must be in [0, 1] (1 = the re-ranker alone) or auto, got 1.5"),
        (["--rerank-weight", "auto", "--dev-queries", str(tmp_path / "none.jsonl"), *dev[2:]], "none.jsonl: no such file"),
        (
            ["--rerank-weight", "AUTO", "--dev-queries", str(judged / "corpus.jsonl"), *dev[2:]],
            "none of the 40 queries of --dev-queries",
        ),
        (
            ["--rerank-weight", "auto", "--dev-queries", str(judged / "queries.jsonl"), *dev[2:]],
            "5 of its judged queries are also test queries",
        ),
    ]:
        r = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / "bad")])
        assert r.exit_code != 0 and msg in r.stderr, r.output
        assert not (tmp_path / "bad").exists()
