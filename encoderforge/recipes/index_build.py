"""`encoderforge index build|add|delete|search`: the index recipes the CLI maps to (index/ holds the machinery).

encoderforge index build corpus.jsonl runs/ix --model minilm-l6     # flat up to 100k docs, hnsw above
encoderforge index search runs/ix "who may copy the work?" -k 5
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file, check_output
from encoderforge.index.build import SHARD_SIZE, BuildResult, add_documents, build_index
from encoderforge.index.dense import DenseIndex
from encoderforge.index.embedder import load_embedder
from encoderforge.index.late_model import build_late, is_colbert_run, load_late_embedder
from encoderforge.index.manifest import read_manifest
from encoderforge.index.readers import check_docs, read_docs
from encoderforge.index.retrievers import DenseRetriever, open_index
from encoderforge.inference.precision import Precision, check_precision
from encoderforge.model.zoo import ZOO, resolve_model


def index_build(
    corpus: str | Path,
    out: str | Path,
    *,
    model: str = "minilm-l6",
    kind: str = "auto",
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int | None = None,
    shard_size: int = SHARD_SIZE,
    store_text: bool = True,
    overwrite: bool = False,
    threads: int | None = None,
    precision: Precision = "fp32",
) -> BuildResult:
    """Build a dense (or BM25) index of a corpus JSONL; a killed build resumes when rerun with the same arguments.

    Args:
        corpus: JSONL of {"id", "text", ...metadata}.
        out: the index directory.
        model: an embed run, checkpoint directory or zoo name (ignored for kind "bm25").
        kind: auto (flat <= 100k documents, else hnsw) | flat | hnsw | ivfpq | bm25.
        pooling, normalize, max_length: for a plain encoder (an embed run's task.json decides for itself).
        shard_size: documents embedded per resumable shard.
        store_text: keep texts in the index metadata (printed by `index search`).
        overwrite: replace an existing index.
        threads: torch intra-op threads (default: torch's).
        precision: the embedding GEMMs' precision: fp32, bf16 (AVX512-BF16 or AMX CPUs; the engine's fidelity gate
            checks it against fp32) or auto (bf16 only where it measures faster); queries may use any precision.
    Returns:
        BuildResult.
    """
    dense = kind != "bm25"
    check_precision(precision)
    check_output(out, [corpus, model_dir_of(model) if dense else None], flag="OUT", expect="dir")
    check_docs(corpus)  # every line checked before the model loads: a bad line costs no wait
    if threads:
        torch.set_num_threads(threads)
    if dense and is_colbert_run(model):  # a ColBERT run: a compressed late-interaction index (index/late.py)
        if kind not in ("auto", "colbert"):
            raise EncoderforgeError(
                f"--kind {kind}: {model} is a ColBERT run, indexed per token; omit --kind (or --kind colbert)"
            )
        late = load_late_embedder(model, precision=precision)
        return build_late(corpus, out, late, store_text=store_text, overwrite=overwrite, shard_size=shard_size)
    if kind == "colbert":
        raise EncoderforgeError(f"--kind colbert needs a `finetune colbert` run as --model (got {model})")
    emb = (
        load_embedder(model, pooling=pooling, normalize=normalize, max_length=max_length, precision=precision) if dense else None
    )
    return build_index(corpus, out, emb, kind=kind, shard_size=shard_size, store_text=store_text, overwrite=overwrite)


def index_add(index_dir: str | Path, corpus: str | Path, *, model: str | None = None, store_text: bool = True) -> int:
    """Embed the documents of `corpus` into an existing dense index (with its own model unless `model` is given)."""
    retriever = open_index(index_dir, model=model)
    if not isinstance(retriever, DenseRetriever):
        what = "--kind bm25" if read_manifest(index_dir, verify=False).kind == "bm25" else "--model COLBERT_RUN"
        raise EncoderforgeError(
            f"{index_dir}: a {'BM25' if what == '--kind bm25' else 'ColBERT'} index cannot grow in place; rebuild it "
            f"with `encoderforge index build {what}` over the whole corpus"
        )
    check_docs(corpus)
    return add_documents(index_dir, corpus, retriever.embedder, store_text=store_text)


def index_delete(index_dir: str | Path, ids: Sequence[str]) -> int:
    """Remove documents by id and save the index atomically. Returns the number removed."""
    if not ids:
        raise EncoderforgeError("no ids given; pass the ids to delete, e.g. `encoderforge index delete DIR doc-1 doc-2`")
    kind = read_manifest(index_dir, verify=False).kind
    if kind in ("bm25", "colbert"):
        raise EncoderforgeError(
            f"{index_dir}: a {'BM25' if kind == 'bm25' else 'ColBERT'} index cannot delete in place; rebuild it from "
            "the corpus without those documents"
        )
    index = DenseIndex.load(index_dir)
    index.delete(list(dict.fromkeys(ids)))
    index.save(index_dir)
    return len(set(ids))


@dataclass
class SearchRow:
    """One result: the query's id, the rank (from 1), the document id, its score and metadata."""

    query: str
    rank: int
    id: str
    score: float
    meta: dict


def index_search(
    index_dir: str | Path,
    texts: Sequence[str],
    *,
    k: int = 10,
    query_ids: Sequence[str] | None = None,
    model: str | None = None,
    pooling: str | None = None,
) -> list[SearchRow]:
    """Search an index (dense or BM25) with query texts; `model`/`pooling` must match the index's (checked)."""
    retriever = open_index(index_dir, model=model, pooling=pooling)
    hits = retriever.search(list(texts), k)
    meta = retriever.meta
    qids = list(query_ids) if query_ids is not None else [str(n) for n in range(1, len(texts) + 1)]
    return [
        SearchRow(qids[q], r, doc, score, meta.get(doc, {}))
        for q, (ids, scores) in enumerate(zip(hits.ids, hits.scores))
        for r, (doc, score) in enumerate(zip(ids, scores), 1)
    ]


def index_search_file(
    index_dir: str | Path,
    queries: str | Path,
    out: str | Path,
    *,
    k: int = 10,
    model: str | None = None,
    pooling: str | None = None,
) -> int:
    """Search every query of a queries JSONL ({"id", "text"}); write a run TSV (`qid docid rank score`) when `out`
    ends in .tsv, else JSONL ({"query_id", "rank", "id", "score"}). Returns the number of queries."""
    check_output(out, [index_dir, queries])
    qs = read_docs(queries, what="queries")
    rows = index_search(index_dir, [q.text for q in qs], k=k, query_ids=[q.id for q in qs], model=model, pooling=pooling)
    with atomic_file(out, encoding="utf-8") as f:
        for r in rows:
            if str(out).endswith(".tsv"):
                f.write(f"{r.query}\t{r.id}\t{r.rank}\t{r.score:.6f}\n")
            else:
                f.write(json.dumps({"query_id": r.query, "rank": r.rank, "id": r.id, "score": round(r.score, 6)}) + "\n")
    return len(qs)


def model_dir_of(model: str) -> Path | None:
    """The model directory to protect from being written into (None for a zoo name that is not installed)."""
    try:
        return resolve_model(model)
    except EncoderforgeError:
        return None if model in ZOO else Path(model)
