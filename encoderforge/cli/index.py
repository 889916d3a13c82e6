"""`encoderforge index build|add|delete|search|mine|rotate` and `encoderforge eval-retrieval`: thin commands over
encoderforge.recipes.index_build and encoderforge.recipes.eval_retrieval (recipes import lazily: `--help` stays fast)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from encoderforge.cli.common import Pooling, PrecisionOpt, fail_on_error

app = typer.Typer(help="Dense (faiss) and BM25 indexes of a corpus JSONL: build, add, delete, search.", no_args_is_help=True)


class Kind(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"
    bm25 = "bm25"
    colbert = "colbert"


MODEL_HELP = "An `embed` (or `colbert`) run directory, a checkpoint directory or a zoo name."


@app.command()
def build(
    corpus: Path = typer.Argument(..., help='Corpus JSONL: one {"id", "text", ...metadata} per line.'),
    out: Path = typer.Argument(..., help="Index directory; rerun the same command to resume a killed build."),
    model: str = typer.Option("minilm-l6", help=MODEL_HELP),
    kind: Kind = typer.Option(
        Kind.auto,
        help="auto = flat up to 100k documents, hnsw above (a ColBERT run: its compressed token index); ivfpq = "
        "compressed; bm25 = lexical.",
    ),
    pooling: Pooling = typer.Option(Pooling.mean, help="For a plain encoder (an embed run sets its own)."),
    normalize: bool = typer.Option(True, help="L2-normalize vectors (for a plain encoder)."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per text (default 256, or the model's limit)."),
    shard_size: int = typer.Option(10_000, help="Documents per resumable embedding shard."),
    store_text: bool = typer.Option(True, help="Keep texts in the index (shown by `index search`, used by re-ranking)."),
    overwrite: bool = typer.Option(False, help="Replace an existing index."),
    threads: Optional[int] = typer.Option(None, help="Torch intra-op threads."),
    precision: PrecisionOpt = typer.Option(
        PrecisionOpt.fp32, help="bf16 GEMMs need AVX512-BF16 or AMX and pass a fidelity gate; auto: bf16 only where faster."
    ),
) -> None:
    """Embed a corpus in resumable shards and build a faiss index (or a BM25 index with --kind bm25)."""
    from encoderforge.recipes.index_build import index_build

    with fail_on_error():
        r = index_build(
            corpus,
            out,
            model=model,
            kind=kind.value,
            pooling=pooling.value,
            normalize=normalize,
            max_length=max_length,
            shard_size=shard_size,
            store_text=store_text,
            overwrite=overwrite,
            threads=threads,
            precision=precision.value,
        )
    resumed = f", {r.shards - r.shards_embedded} of {r.shards} shards resumed" if r.shards_embedded < r.shards else ""
    how = f", embedded in {r.precision}" if r.kind != "bm25" and r.precision != "fp32" else ""
    note = f" ({r.note})" if r.note else ""
    typer.echo(f"indexed {r.count} documents ({r.kind}) in {r.out} in {r.seconds:.1f}s{resumed}{how}{note}")


@app.command()
def add(
    index: Path = typer.Argument(..., help="An index directory from `index build`."),
    corpus: Path = typer.Argument(..., help="Corpus JSONL of new documents (ids not yet in the index)."),
    model: Optional[str] = typer.Option(None, help="Override where the index's model is found (must be the same model)."),
) -> None:
    """Add documents to a dense index (saved atomically)."""
    from encoderforge.recipes.index_build import index_add

    with fail_on_error():
        n = index_add(index, corpus, model=model)
    typer.echo(f"added {n} documents to {index}")


@app.command()
def delete(
    index: Path = typer.Argument(..., help="An index directory from `index build`."),
    ids: List[str] = typer.Argument(..., help="Document ids to remove."),
) -> None:
    """Remove documents from a dense index by id (saved atomically)."""
    from encoderforge.recipes.index_build import index_delete

    with fail_on_error():
        n = index_delete(index, ids)
    typer.echo(f"deleted {n} documents from {index}")


@app.command()
def search(
    index: Path = typer.Argument(..., help="An index directory from `index build`."),
    query: Optional[str] = typer.Argument(None, help="A query text (or pass --queries FILE)."),
    k: int = typer.Option(10, "-k", help="Results per query."),
    queries: Optional[Path] = typer.Option(None, help='Queries JSONL ({"id", "text"}) for a batch search; needs --out.'),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Batch output: .tsv (qid docid rank score) or JSONL."),
    model: Optional[str] = typer.Option(None, help="Query model (default: the index's; another one is refused)."),
    pooling: Optional[Pooling] = typer.Option(None, help="Query pooling (default: the index's)."),
) -> None:
    """Print the best documents for a query (id, score, text and metadata), or search a queries file in batch."""
    from encoderforge import EncoderforgeError
    from encoderforge.recipes.index_build import index_search, index_search_file

    pool = pooling.value if pooling else None
    with fail_on_error():
        if (query is None) == (queries is None):
            raise EncoderforgeError('pass one query text, or --queries FILE --out FILE (e.g. `index search DIR "text" -k 5`)')
        if queries is not None:
            if out is None:
                raise EncoderforgeError("--queries needs --out FILE (.tsv run or .jsonl)")
            n = index_search_file(index, queries, out, k=k, model=model, pooling=pool)
            typer.echo(f"searched {n} queries; wrote {out}")
            return
        rows = index_search(index, [query or ""], k=k, model=model, pooling=pool)
    for r in rows:
        meta = dict(r.meta)
        text = " ".join(str(meta.pop("text", "")).split())
        extra = f"  {json.dumps(meta, ensure_ascii=False)}" if meta else ""
        typer.echo(f"{r.rank:>3}  {r.score:.4f}  {r.id}  {text[:100]!r}{extra}")


@app.command()
def mine(
    index: Path = typer.Argument(..., help="The first-stage index (dense or bm25) of the TRAINING documents."),
    pairs: Path = typer.Argument(..., help='Pairs JSONL: {"query", "positive"} per line (the embed format).'),
    out: Path = typer.Argument(..., help='Output pairs JSONL with mined "negatives" (written atomically).'),
    negatives: int = typer.Option(7, help="Hard negatives per row."),
    skip: int = typer.Option(0, help="Skip this many top non-positive hits first (guards against unlabelled relevant ones)."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus JSONL with the texts, when the index stores none."),
    model: Optional[str] = typer.Option(None, help="Query model (default: the index's; another one is refused)."),
    sample_depth: int = typer.Option(
        0, help="Draw the negatives at random from the top D hits (the candidates a depth-D re-ranker sees); 0: the best-ranked."
    ),
    seed: int = typer.Option(0, help="Seed of --sample-depth's draw."),
    found_only: bool = typer.Option(
        False, help="Keep only rows whose positive is among the top --sample-depth hits (the lists a re-ranker re-orders)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing OUT."),
) -> None:
    """Mine hard negatives for training pairs from an index: each query's best-ranked documents that are none of
    its positives (with --sample-depth D: a seeded draw from its top D), for `finetune rerank` (a re-ranker's data:
    --sample-depth 20 --found-only) or `finetune embed`."""
    from encoderforge.recipes.index_mine import mine_negatives

    with fail_on_error():
        r = mine_negatives(
            index, pairs, out, negatives=negatives, skip=skip, corpus=corpus, model=model, overwrite=overwrite,
            sample_depth=sample_depth, seed=seed, found_only=found_only,
        )  # fmt: skip
    short = f"; {r.short} rows got fewer than {negatives} (too few other documents in the search depth)" if r.short else ""
    if r.unindexed:  # such a positive may come back as its own negative: say so, it is the user's data to check
        short += f"; WARNING: {r.unindexed} positives are no document of the index (their text differs from the corpus?)"
    if r.dropped:
        short += f"; left out {r.dropped} pairs whose positive is not among the top {sample_depth} (--found-only)"
    typer.echo(f"mined negatives for {r.rows} pairs ({r.queries} queries) into {r.out}{short}")


@app.command()
def rotate(
    model: str = typer.Argument(..., help="An `embed` run directory, a checkpoint directory or a zoo name."),
    corpus: Path = typer.Argument(..., help="Corpus JSONL: the documents the index will hold (the rotation is fitted on them)."),
    out: Path = typer.Option(..., "--out", "-o", help="The rotated run's directory (never overwritten)."),
    dims: Optional[int] = typer.Option(None, help="Cut the rotated vectors to their first DIMS coordinates by default."),
    sample: int = typer.Option(100_000, help="Documents embedded for the fit at most (a seeded sample)."),
    pooling: Pooling = typer.Option(Pooling.mean, help="For a plain encoder (an embed run sets its own)."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per text (default: the run's, or 256)."),
    threads: Optional[int] = typer.Option(None, help="Torch intra-op threads."),
    precision: PrecisionOpt = typer.Option(
        PrecisionOpt.fp32, help="GEMM precision for embedding the sample: fp32, bf16 (AVX512-BF16/AMX, fidelity-gated), auto."
    ),
) -> None:
    """Rotate a model's vectors to a corpus's principal directions (orthogonal: full-width scores unchanged), so a
    Matryoshka cut to --dims keeps more; writes a new embed run that index build, eval-retrieval and serve use."""
    from encoderforge.recipes.index_rotate import index_rotate

    with fail_on_error():
        r = index_rotate(
            model,
            corpus,
            out,
            dims=dims,
            sample=sample,
            pooling=pooling.value,
            max_length=max_length,
            threads=threads,
            precision=precision.value,
        )
    kept = ", ".join(f"{w}: {r.kept[w]:.1%} (unrotated {r.kept_before[w]:.1%})" for w in sorted(r.kept))
    cut = f", cut to {r.dims} dims by default" if r.dims else ""
    typer.echo(f"rotated {r.dim}-dim vectors on {r.sampled} documents into {r.out}{cut} in {r.seconds:.1f}s; "
               f"share of the vectors kept by the first N coordinates: {kept}")  # fmt: skip


def eval_retrieval(
    queries: Path = typer.Option(..., help='Queries JSONL ({"id", "text"}).'),
    qrels: Path = typer.Option(..., help="Qrels TSV: query_id, doc_id, relevance (trec-style, no header)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (metrics.json, run.tsv) that `encoderforge eval` lists."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus JSONL (for --model, --bm25, or re-ranking an index without texts)."),
    index: Optional[Path] = typer.Option(None, help="A saved index (dense or bm25) to evaluate."),
    model: Optional[str] = typer.Option(None, help=f"{MODEL_HELP} Without --index: embeds the corpus, exact search."),
    bm25: bool = typer.Option(False, "--bm25", help="Without --index: BM25 over the corpus."),
    pooling: Pooling = typer.Option(Pooling.mean, help="For a plain encoder given as --model."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per text for a plain encoder (default 256)."),
    k: int = typer.Option(100, "-k", help="Documents retrieved per query (recall@100 needs 100)."),
    rerank: Optional[Path] = typer.Option(
        None, help="A fine-tuned cross-encoder run (rerank, or pair classify 0/1 / regress) that re-scores the top."
    ),
    rerank_depth: int = typer.Option(100, help="How many top documents --rerank re-scores."),
    rerank_weight: str = typer.Option(
        "1",
        help="1: order by the re-ranker alone; below 1: w * z(re-ranker) + (1 - w) * z(first stage); auto: the w of "
        "0, 0.1, .., 1 with the best nDCG@10 on --dev-queries.",
    ),
    dev_queries: Optional[Path] = typer.Option(None, help="Judged dev queries (JSONL) that --rerank-weight auto tunes on."),
    dev_qrels: Optional[Path] = typer.Option(None, help="Qrels TSV of --dev-queries."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
    threads: Optional[int] = typer.Option(None, help="Torch intra-op threads."),
    dims: Optional[int] = typer.Option(None, help="With --model: score on the first DIMS coordinates (Matryoshka)."),
    layers: Optional[int] = typer.Option(None, help="With --model: embed with its first LAYERS layers (2D Matryoshka)."),
) -> None:
    """Retrieval metrics (nDCG@10, MRR@10, Recall@1/10/100, latency p50/p99) of one retriever on judged queries."""
    from encoderforge.recipes.eval_retrieval import eval_retrieval as run

    with fail_on_error():
        r = run(
            queries,
            qrels,
            out,
            corpus=corpus,
            index=index,
            model=model,
            bm25=bm25,
            pooling=pooling.value,
            max_length=max_length,
            k=k,
            rerank=rerank,
            rerank_depth=rerank_depth,
            rerank_weight=rerank_weight,
            overwrite=overwrite,
            threads=threads,
            dims=dims,
            layers=layers,
            dev_queries=dev_queries,
            dev_qrels=dev_qrels,
        )
    t = r.metrics["test"]
    chosen = (r.metrics["rerank"] or {}).get("chosen_on")
    if chosen:
        typer.echo(f"--rerank-weight {r.metrics['rerank']['weight']:.1f}: weight chosen on {chosen['queries']} dev queries")
    typer.echo(
        f"ndcg@10 {t['ndcg@10']:.4f}  mrr@10 {t['mrr@10']:.4f}  recall@10 {t['recall@10']:.4f}  recall@100 "
        f"{t['recall@100']:.4f} over {t['n']} queries ({r.metrics['skipped_queries']} skipped: no qrels); "
        f"p50 {r.metrics['latency_ms']['p50']:.1f} ms; wrote {r.out}"
    )
