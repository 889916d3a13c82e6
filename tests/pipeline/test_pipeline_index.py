"""The index stage on a smoke-sized pipeline (real licensedcode data and license texts, a tiny random encoder): its
metrics.json is eval-retrieval's own output for each retriever, the report and terminal table show it best first
with a plain verdict, and it reruns only when its inputs change."""

from __future__ import annotations

import io
import json
from html import unescape
from pathlib import Path

import pytest
from test_pipeline_run import parse, read  # the report-table parser (pytest puts this folder on sys.path)

from encoderforge.index.readers import Doc
from encoderforge.pipeline.config import load_pipeline
from encoderforge.pipeline.index_stage import cap_corpus
from encoderforge.pipeline.runner import RunResult, run_pipeline
from encoderforge.pipeline.summary import SearchRow, search_verdict, summarize, table_text

ROLES = {"finetuned", "base", "bm25"}


def pipeline(tmp: Path, tiny: Path, overrides: list[str] | None = None) -> RunResult:
    """data -> finetune (bert-tiny, one epoch) -> index (40 documents, 32 tokens) -> report, into tmp/run."""
    (tmp / "p.yaml").write_text(
        "data: {max_train: 32, max_dev: 8, max_test: 24, max_chars: 160}\n"
        f"finetune: {{task: multilabel, model: {tiny}, finetune: {{epochs: 1, max_length: 32, probe: false, threads: 1}}, "
        "train: {batch_rows: 16}}\n"
        "index: {max_docs: 40, max_length: 32, threads: 1}\n"  # one thread: the test box is shared
        "report: {title: index smoke}\n"
    )
    return run_pipeline(load_pipeline(tmp / "p.yaml", tmp / "run", overrides), stream=io.StringIO())


@pytest.fixture(scope="module")
def index_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    tmp = tmp_path_factory.mktemp("index")
    res = pipeline(tmp, tiny_model)
    assert res.ran == ["data", "finetune", "index", "report"]
    return tmp


def test_index_metrics_are_eval_retrievals_own_output(index_run: Path, tmp_path: Path) -> None:
    from encoderforge.recipes.eval_retrieval import eval_retrieval

    stage = index_run / "run" / "index"
    m = read(stage / "metrics.json")
    corpus = [json.loads(line) for line in (stage / "corpus.jsonl").read_text().splitlines()]
    qrels = [line.split("\t") for line in (stage / "qrels.tsv").read_text().splitlines()]
    assert m["corpus"]["documents"] == len(corpus) == 40 and m["corpus"]["source"] == "licensedcode-texts"
    assert {d for _, d, _ in qrels} <= {d["id"] for d in corpus}  # the cap kept every relevant license text
    assert 0 < m["queries"]["count"] == len({q for q, _, _ in qrels}) <= 24
    assert m["index"]["kind"] == "flat" and m["index"]["mb"] > 0 and m["index"]["max_length"] == 32
    assert m["seconds"] > 0 and {r["role"] for r in m["retrievers"].values()} == ROLES
    for row in m["retrievers"].values():  # the stage's numbers are its eval-retrieval runs' numbers
        own = read(stage / "eval" / row["role"] / "metrics.json")
        assert {k: row[k] for k in ("ndcg@10", "mrr@10", "recall@10")} == {
            k: own["test"][k] for k in ("ndcg@10", "mrr@10", "recall@10")
        }
        assert (row["p50_ms"], row["p99_ms"]) == (own["latency_ms"]["p50"], own["latency_ms"]["p99"])
    # and eval-retrieval run by hand on the stage's files agrees (BM25, and the saved dense index)
    q, rel = stage / "queries.jsonl", stage / "qrels.tsv"
    by_role = {r["role"]: r for r in m["retrievers"].values()}
    bm25 = eval_retrieval(q, rel, tmp_path / "bm25", corpus=stage / "corpus.jsonl", bm25=True).metrics["test"]
    dense = eval_retrieval(q, rel, tmp_path / "dense", index=stage / "dense").metrics["test"]
    assert bm25["ndcg@10"] == by_role["bm25"]["ndcg@10"] and dense["ndcg@10"] == by_role["finetuned"]["ndcg@10"]


def test_report_and_terminal_show_the_search_table_best_first(index_run: Path) -> None:
    run = index_run / "run"
    m = read(run / "index" / "metrics.json")["retrievers"]
    html = (run / "report" / "report.html").read_text(encoding="utf-8")
    rows = parse(html).tables["search"][1:]
    assert [r[0] for r in rows] == sorted(m, key=lambda n: -m[n]["ndcg@10"])
    for r in rows:
        assert r[1:4] == [f"{m[r[0]][k]:.3f}" for k in ("ndcg@10", "mrr@10", "recall@10")]
    s = summarize(run).search
    assert s is not None and s.verdict in unescape(html) and s.verdict.startswith("Search (nDCG@10 over")
    text = table_text(summarize(run))
    assert "search: licensedcode-texts, 40 documents" in text and s.verdict in text


def test_index_reruns_only_when_its_inputs_change(index_run: Path, tiny_model: Path) -> None:
    res = pipeline(index_run, tiny_model)
    assert res.ran == [] and "index" in res.skipped
    res = pipeline(index_run, tiny_model, ["index.max_docs=30"])
    assert res.ran == ["index", "report"]  # the index and what reads it; data and the model are untouched
    assert read(index_run / "run" / "index" / "metrics.json")["corpus"]["documents"] == 30
    assert read(index_run / "run" / "index" / "dense.json")["count"] == 30  # rebuilt, not the old 40-document index


def test_search_verdict_says_when_the_fine_tuned_model_loses() -> None:
    def row(name: str, role: str, ndcg: float) -> SearchRow:
        return SearchRow(name, role, ndcg, None, None, None, None)

    rows = [row("BM25", "bm25", 0.60), row("fine-tuned", "finetuned", 0.50), row("base model (minilm-l6)", "base", 0.40)]
    v = search_verdict(rows, 400, 250)
    assert "did NOT beat BM25 (0.500 vs 0.600, -10.0 points)" in v
    assert "beat base model (minilm-l6) (0.500 vs 0.400, +10.0 points)" in v
    assert "BM25 is the best retriever here" in v
    v = search_verdict([row("fine-tuned", "finetuned", 0.605), row("BM25", "bm25", 0.60)], 400, 250)
    assert "only tied BM25" in v and "within noise" in v
    v = search_verdict([row("fine-tuned", "finetuned", 0.6), row("BM25", "bm25", 0.6)], 400, 250)
    assert "did NOT beat BM25 (tied at 0.600)" in v


def test_the_cut_row_is_the_fine_tuned_model_not_a_competitor() -> None:
    def row(name: str, role: str, ndcg: float) -> SearchRow:
        return SearchRow(name, role, ndcg, None, None, None, None)

    cut = row("fine-tuned, first 96 of 384 dims (rotated)", "finetuned-cut", 0.62)  # ranked above its own full width
    v = search_verdict([cut, row("fine-tuned", "finetuned", 0.6), row("BM25", "bm25", 0.5)], 400, 250)
    assert "beat BM25 (0.600 vs 0.500" in v and "first 96 of 384 dims (rotated) keep 103.3% of its nDCG@10" in v
    assert "best retriever here" not in v and "did NOT" not in v


def test_index_dims_searches_the_rotated_cut_beside_the_full_width(tmp_path: Path, tiny_model: Path) -> None:
    from encoderforge.recipes.eval_retrieval import eval_retrieval

    res = pipeline(tmp_path, tiny_model, ["index.dims=32", "index.base=false"])
    assert res.ran == ["data", "finetune", "index", "report"]
    stage = tmp_path / "run" / "index"
    rows = read(stage / "metrics.json")["retrievers"]
    cut = rows["fine-tuned, first 32 of 128 dims (rotated)"]
    assert cut["role"] == "finetuned-cut" and "dim 32" in cut["retriever"]
    assert read(stage / "rotated" / "task.json")["dims"] == 32
    own = eval_retrieval(stage / "queries.jsonl", stage / "qrels.tsv", tmp_path / "cut", corpus=stage / "corpus.jsonl",
                         model=str(stage / "rotated")).metrics["test"]  # fmt: skip
    assert own["ndcg@10"] == cut["ndcg@10"]
    s = summarize(tmp_path / "run").search
    assert s is not None and "first 32 of 128 dims (rotated) keep" in s.verdict
    made = (stage / "rotated" / "rotation.json").stat().st_mtime_ns
    assert pipeline(tmp_path, tiny_model, ["index.dims=32", "index.base=false", "index.max_docs=30"]).ran == ["index", "report"]
    assert (stage / "rotated" / "rotation.json").stat().st_mtime_ns != made  # another corpus: fitted again
    assert read(stage / "rotated" / "rotation.json")["documents"] == 30


def test_cap_keeps_every_relevant_document_then_a_seeded_sample() -> None:
    docs = [Doc(id=f"d{i:02d}", text="x") for i in range(50)]
    kept = cap_corpus(docs, {"d03", "d41"}, 10, seed=0)
    assert len(kept) == 10 and {"d03", "d41"} <= {d.id for d in kept}
    assert [d.id for d in kept] == sorted(d.id for d in kept)  # corpus order
    assert kept == cap_corpus(docs, {"d03", "d41"}, 10, seed=0) != cap_corpus(docs, {"d03", "d41"}, 10, seed=1)
    assert cap_corpus(docs, set(), 0, seed=0) == docs
