"""`encoderforge index mine`: hard negatives from a real BM25 index and a dense one, checked against the index's own
ranking with the query's positives left out; skip, the CLI and its bad-input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from encoderforge import EncoderforgeError
from encoderforge.cli.app import app
from encoderforge.recipes.index_build import index_build, index_search
from encoderforge.recipes.index_mine import mine_negatives


@pytest.fixture(scope="module")
def mined_setup(tmp_path_factory, bbc_docs):
    d = tmp_path_factory.mktemp("mine")
    docs = bbc_docs[:40]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs), encoding="utf-8")
    # two rows share a query (two positives); the others: an article's first sentence -> the article
    rows = [{"query": docs[i]["text"].split(".")[0], "positive": docs[i]["text"]} for i in range(0, 40, 5)]
    rows.append({"query": rows[0]["query"], "positive": docs[1]["text"]})
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    index_build(d / "corpus.jsonl", d / "bm25", kind="bm25")
    return d, docs, rows


def test_negatives_are_the_index_ranking_without_the_query_positives(mined_setup, tmp_path):
    d, docs, rows = mined_setup
    r = mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "m.jsonl", negatives=4)
    assert (r.rows, r.queries, r.short) == (len(rows), len(rows) - 1, 0)
    out = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(o["query"], o["positive"]) for o in out] == [(x["query"], x["positive"]) for x in rows]
    text = {x["id"]: x["text"] for x in docs}
    for o in out:
        positives = {x["positive"] for x in rows if x["query"] == o["query"]}
        ranked = [text[h.id] for h in index_search(d / "bm25", [o["query"]], k=40)]
        assert o["negatives"] == [t for t in ranked if t not in positives][:4]
    assert out[0]["negatives"] == out[-1]["negatives"] and docs[1]["text"] not in out[0]["negatives"]
    skipped = mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "s.jsonl", negatives=2, skip=2)
    assert skipped.short == 0
    again = [json.loads(x)["negatives"] for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert again == [o["negatives"][2:4] for o in out]


def test_sampled_negatives_come_from_the_top_depth_hits_seeded_per_query(mined_setup, tmp_path):
    # --sample-depth D: the negatives a re-ranker of depth D will face, drawn at random from the first stage's top D
    # (not only its best-ranked ones, which sit above a weak first stage's positive and teach "prefer the less similar")
    d, docs, rows = mined_setup
    text = {x["id"]: x["text"] for x in docs}
    r = mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "a.jsonl", negatives=3, sample_depth=12, seed=1)
    assert r.short == 0
    out = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    spread = set()
    for o in out:
        positives = {x["positive"] for x in rows if x["query"] == o["query"]}
        top = [text[h.id] for h in index_search(d / "bm25", [o["query"]], k=12)]
        pool = [t for t in top if t not in positives]
        assert len(o["negatives"]) == 3 and len(set(o["negatives"])) == 3 and set(o["negatives"]) <= set(pool)
        spread |= {pool.index(n) for n in o["negatives"]}
    assert max(spread) >= 3  # not just the best-ranked three
    same = mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "b.jsonl", negatives=3, sample_depth=12, seed=1)
    assert same.rows == r.rows and (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "c.jsonl", negatives=3, sample_depth=12, seed=2)
    assert (tmp_path / "c.jsonl").read_text() != (tmp_path / "a.jsonl").read_text()
    # --skip still applies: the draw comes from the pool past the first `skip` non-positive hits
    mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "k.jsonl", negatives=3, sample_depth=12, skip=2)
    for o in [json.loads(x) for x in (tmp_path / "k.jsonl").read_text().splitlines()]:
        positives = {x["positive"] for x in rows if x["query"] == o["query"]}
        pool = [t for t in [text[h.id] for h in index_search(d / "bm25", [o["query"]], k=12)] if t not in positives]
        assert len(o["negatives"]) == min(3, len(pool) - 2) and set(o["negatives"]) <= set(pool[2:])
    with pytest.raises(EncoderforgeError, match=r"--sample-depth 2 must be 0 \(off\) or at least --skip \+ --negatives = 3"):
        mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "o.jsonl", negatives=3, sample_depth=2)


def test_found_only_keeps_the_rows_whose_positive_is_in_the_top_depth(mined_setup, tmp_path):
    d, docs, rows = mined_setup
    text = {x["id"]: x["text"] for x in docs}
    r = mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "f.jsonl", negatives=1, sample_depth=2, found_only=True)
    want = [x for x in rows if x["positive"] in [text[h.id] for h in index_search(d / "bm25", [x["query"]], k=2)]]
    out = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert 0 < len(want) < len(rows) and [(o["query"], o["positive"]) for o in out] == [(x["query"], x["positive"]) for x in want]
    assert (r.rows, r.dropped, r.queries) == (len(want), len(rows) - len(want), len({x["query"] for x in want}))
    assert r.short == 0 and all(len(o["negatives"]) == 1 and o["negatives"][0] != o["positive"] for o in out)
    with pytest.raises(EncoderforgeError, match=r"--found-only .* pass --sample-depth"):
        mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "o.jsonl", found_only=True)
    with pytest.raises(EncoderforgeError, match=r"at least --skip \+ --negatives \+ 1 \(the positive is among them\) = 2"):
        mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "o.jsonl", negatives=1, sample_depth=1, found_only=True)
    # the CLI passes the three options through and says what it left out
    args = ["index", "mine", str(d / "bm25"), str(d / "pairs.jsonl"), str(tmp_path / "cli.jsonl"), "--negatives", "1"]
    res = CliRunner().invoke(app, [*args, "--sample-depth", "2", "--seed", "0", "--found-only"])
    assert res.exit_code == 0, res.output
    assert f"left out {len(rows) - len(want)} pairs whose positive is not among the top 2" in res.output
    assert (tmp_path / "cli.jsonl").read_text() == (tmp_path / "f.jsonl").read_text()


def test_dense_index_and_the_cli(mined_setup, tiny_model, tmp_path):
    d, docs, rows = mined_setup
    index_build(d / "corpus.jsonl", tmp_path / "dense", model=str(tiny_model), kind="flat")
    res = CliRunner().invoke(
        app, ["index", "mine", str(tmp_path / "dense"), str(d / "pairs.jsonl"), str(tmp_path / "m.jsonl"), "--negatives", "39"]
    )
    assert res.exit_code == 0, res.output
    assert (
        f"mined negatives for {len(rows)} pairs" in res.output
        and "; 2 rows got fewer than 39" in res.output
        and "WARNING" not in res.output
    )
    out = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [len(o["negatives"]) for o in out] == [38] + [39] * (len(rows) - 2) + [38]  # 40 documents less the positives
    assert out[1]["positive"] not in out[1]["negatives"] and not {x["positive"] for x in rows[::8]} & set(out[0]["negatives"])
    res = CliRunner().invoke(app, ["index", "mine", str(tmp_path / "dense"), str(d / "pairs.jsonl"), str(tmp_path / "m.jsonl")])
    assert res.exit_code != 0 and "exists; pass --overwrite" in res.output


def test_bad_input_is_one_line_and_writes_nothing(mined_setup, tmp_path):
    d, _, _ = mined_setup
    graded = tmp_path / "graded.jsonl"
    graded.write_text(json.dumps({"query": "a", "positive": "b", "negatives": 0.5}) + "\n")
    with pytest.raises(EncoderforgeError, match=r"graded.jsonl:1: a graded pair"):
        mine_negatives(d / "bm25", graded, tmp_path / "o.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"query": "a", "positive": " "}) + "\n")
    with pytest.raises(EncoderforgeError, match=r"empty.jsonl:1: field 'positive' is missing, empty"):
        mine_negatives(d / "bm25", empty, tmp_path / "o.jsonl")
    with pytest.raises(EncoderforgeError, match=r"--negatives must be >= 1"):
        mine_negatives(d / "bm25", d / "pairs.jsonl", tmp_path / "o.jsonl", negatives=0)
    with pytest.raises(EncoderforgeError, match=r"is the input"):
        mine_negatives(d / "bm25", d / "pairs.jsonl", d / "pairs.jsonl", overwrite=True)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_positive_written_differently_is_still_recognised_and_a_missing_one_counted(mined_setup, tmp_path, write_jsonl):
    d, docs, _ = mined_setup
    doc = docs[10]["text"]
    respelled = "  ".join(doc.upper().split())  # other case and spacing than the index's copy
    rows = [{"query": doc.split(".")[0], "positive": respelled}, {"query": "who scored?", "positive": "a text in no index"}]
    r = mine_negatives(d / "bm25", write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "m.jsonl", negatives=5)
    out = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert index_search(d / "bm25", [rows[0]["query"]], k=1)[0].id == docs[10]["id"]  # BM25's first hit is the positive
    assert doc not in out[0]["negatives"] and len(out[0]["negatives"]) == 5
    assert r.unindexed == 1  # the second row's positive is no document of the index
