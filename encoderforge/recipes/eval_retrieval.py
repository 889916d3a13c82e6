"""`encoderforge eval-retrieval`: queries + qrels + one retriever (a saved index, a model over the corpus, or BM25),
optionally re-ranked by a fine-tuned cross-encoder -> a run directory that `encoderforge eval` lists.

    OUT/metrics.json  {"task": "retrieval", "primary": "ndcg@10", "test": {recall@1/10/100, mrr@10, ndcg@10, n},
                       "latency_ms": {"p50", "p99"}, "retriever", "rerank", ...}  (the finetune runs' layout)
    OUT/task.json     {"kind": "retrieval", ...}
    OUT/run.tsv       qid<TAB>docid<TAB>rank<TAB>score, best first per query; the scores sort like the ranks (a
                      re-ranked top-K's tail is shifted below it), so trec_eval, which sorts by score, agrees
    OUT/config.json   inputs and their sha256, settings
    OUT/rerank.tsv    with --rerank: query, doc, first_stage, reranker scores of every re-scored candidate (header)
    OUT/dev-rerank.tsv  with --rerank-weight auto: the same for the dev queries the weight was chosen on

Metrics are computed on our ranking (rank order), with trec_eval's definitions (index/metrics.py). Latency is wall
time per query, one query at a time: embedding + search (+ re-ranking), what a user waits for.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir, check_output, file_digest
from encoderforge.index.bm25 import BM25Index
from encoderforge.index.embedder import load_embedder
from encoderforge.index.fusion import choose_weight, fuse
from encoderforge.index.metrics import evaluate_run
from encoderforge.index.readers import Doc, read_docs, read_qrels
from encoderforge.index.retrievers import BM25Retriever, Retriever, exact_retriever, open_index
from encoderforge.recipes.index_build import model_dir_of
from encoderforge.recipes.predict import Predictor

PRIMARY = "ndcg@10"


@dataclass
class RetrievalEval:
    out: Path
    metrics: dict[str, Any]


def eval_retrieval(
    queries: str | Path,
    qrels: str | Path,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    index: str | Path | None = None,
    model: str | None = None,
    bm25: bool = False,
    pooling: str = "mean",
    max_length: int | None = None,
    k: int = 100,
    rerank: str | Path | None = None,
    rerank_depth: int = 100,
    rerank_weight: float | str = 1.0,
    overwrite: bool = False,
    threads: int | None = None,
    dims: int | None = None,
    layers: int | None = None,
    dev_queries: str | Path | None = None,
    dev_qrels: str | Path | None = None,
) -> RetrievalEval:
    """Evaluate one retriever on judged queries and write a run directory.

    Args:
        queries: JSONL {"id", "text"}; queries without qrels are skipped (counted).
        qrels: TSV query_id, doc_id, relevance.
        out: the run directory to write.
        corpus: JSONL corpus (needed by `model`, `bm25` and by `rerank` when the index stores no texts).
        index: a saved index directory (dense or BM25); `model` then only overrides the query model (checked).
        model: with no index, embed the corpus with this model and search exactly (flat).
        bm25: with no index, BM25 over the corpus.
        pooling, max_length: for a plain encoder given as `model`.
        k: documents retrieved (and written to run.tsv) per query.
        rerank: a fine-tuned cross-encoder run: `rerank`, `classify` on text pairs with labels "0"/"1", or `regress`.
        rerank_depth: how many of the top documents it re-scores.
        rerank_weight: 1 = order them by the re-ranker alone; below 1, by w * z(re-ranker) + (1 - w) * z(first
            stage) (index/fusion.py); OUT/rerank.tsv keeps both scores of every re-ranked candidate. "auto":
            the weight of 0, 0.1, ..., 1 with the best nDCG@10 on `dev_queries` (their candidates re-scored once;
            OUT/dev-rerank.tsv), recorded with its curve in metrics.json.
        dev_queries, dev_qrels: judged dev queries for `rerank_weight="auto"` (refused when they share ids with the
            test queries).
        dims: with `model` and no index, score on the first `dims` coordinates only (Matryoshka truncation).
        layers: with `model` and no index, embed with its first `layers` layers only (2D Matryoshka).
        overwrite: replace an existing OUT.
        threads: torch intra-op threads.
    Returns:
        RetrievalEval with the metrics written to OUT/metrics.json.
    """
    sources = sum([index is not None, model is not None and index is None, bm25])
    if sources != 1:
        raise EncoderforgeError("pass exactly one retriever: --index DIR, --model M (with --corpus) or --bm25 (with --corpus)")
    if (model is not None and index is None or bm25) and corpus is None:
        raise EncoderforgeError("--model and --bm25 search a corpus: pass --corpus FILE")
    if k < 1 or rerank_depth < 1:
        raise EncoderforgeError(f"-k and --rerank-depth must be >= 1 (got {k}, {rerank_depth})")
    weight = _weight(rerank_weight, rerank, dev_queries, dev_qrels)
    inputs = [queries, qrels, corpus, index, rerank, model_dir_of(model) if model else None, dev_queries, dev_qrels]
    check_output(out, inputs, expect="dir")
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise EncoderforgeError(f"{out}: already exists; pass --overwrite or choose another --out")
    if threads:  # for this call only: the caller (a pipeline stage, a server) keeps its own setting
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return eval_retrieval(
                queries,
                qrels,
                out,
                corpus=corpus,
                index=index,
                model=model,
                bm25=bm25,
                pooling=pooling,
                max_length=max_length,
                k=k,
                rerank=rerank,
                rerank_depth=rerank_depth,
                rerank_weight=rerank_weight,
                overwrite=overwrite,
                dims=dims,
                layers=layers,
                dev_queries=dev_queries,
                dev_qrels=dev_qrels,
            )
        finally:
            torch.set_num_threads(before)
    judged = read_qrels(qrels)
    all_q = read_docs(queries, what="queries")
    qs = [q for q in all_q if q.id in judged]
    if not qs:
        raise EncoderforgeError(f"none of the {len(all_q)} queries of {queries} has judgements in {qrels}; check the query ids")
    dev_judged, dev_qs = _dev_queries(dev_queries, dev_qrels) if weight is None else ({}, [])
    shared = sorted({q.id for q in dev_qs} & {q.id for q in qs})
    if shared:
        raise EncoderforgeError(
            f"--dev-queries {dev_queries}: {len(shared)} of its judged queries are also test queries of {queries} "
            f"(e.g. {shared[0]!r}); choose the weight on held-out queries (the dev split), never on the test split"
        )
    docs = read_docs(corpus) if corpus is not None else []
    if dims is not None and (index is not None or model is None):
        raise EncoderforgeError(
            "--dims truncates the vectors of --model (exact search); an index keeps the dims it was built with"
        )
    if layers is not None and (index is not None or model is None):
        raise EncoderforgeError("--layers cuts the encoder of --model (exact search); an index keeps the model it was built with")
    retriever = _retriever(index, model, bm25, docs, pooling=pooling, max_length=max_length, dims=dims, layers=layers)
    texts = {d.id: d.text for d in docs} or {i: m["text"] for i, m in retriever.meta.items() if "text" in m}
    reranker = _reranker(rerank, texts) if rerank is not None else None
    chosen, dev_both = None, []
    if weight is None:  # "auto": re-score the dev queries' candidates once, then pick the weight on them
        dev_both = _search(dev_qs, retriever, reranker, rerank_depth, rerank_depth, 1.0)[1]
        cands: dict[str, list[tuple[str, float, float]]] = {}
        for qid, d, a, b in dev_both:
            cands.setdefault(qid, []).append((d, a, b))
        weight, curve = choose_weight(cands, dev_judged, [q.id for q in dev_qs])
        chosen = {"queries": len(dev_qs), "dev_queries": str(dev_queries), "weights": [w for w, _ in curve],
                  "ndcg@10": [round(n, 6) for _, n in curve]}  # fmt: skip
    run, both, latency = _search(qs, retriever, reranker, k, rerank_depth, weight)
    by_rank = {q: {d: float(len(r) - i) for i, (d, _) in enumerate(r)} for q, r in run.items()}
    m = evaluate_run(by_rank, {q.id: judged[q.id] for q in qs})
    lat = np.array(latency) * 1000
    desc = retriever.describe()
    spec = getattr(getattr(retriever, "embedder", None), "spec", None)  # a dense retriever's EmbedSpec
    metrics = {
        "task": "retrieval",
        "model": desc,
        "primary": PRIMARY,
        "test": {**{n: round(v, 6) for n, v in m.mean.items()}, "n": m.n},
        "queries": m.n,
        "skipped_queries": len(all_q) - len(qs),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
        "retriever": desc,
        "rerank": None
        if rerank is None
        else {"run": str(rerank), "depth": rerank_depth, "weight": weight} | ({"chosen_on": chosen} if chosen else {}),
        "k": k,
        "dims": spec.dims if spec is not None else dims,  # a run's own cut (task.json) too, not only --dims
        "rotated": spec is not None and ":rotation=" in spec.model_hash,  # an `index rotate` run
        "layers": layers,
        "threads": torch.get_num_threads(),
    }
    files = {"queries": queries, "qrels": qrels, "corpus": corpus, "dev_queries": dev_queries, "dev_qrels": dev_qrels}
    config = {
        "inputs": {n: {"path": str(p), "sha256": file_digest(p)} for n, p in files.items() if p is not None},
        "index": None if index is None else str(index),
        "model": model,
        "bm25": bm25,
        "k": k,
        "rerank": None if rerank is None else str(rerank),
        "rerank_depth": rerank_depth,
        "rerank_weight": weight,
        "rerank_weight_auto": chosen is not None,
    }
    with atomic_dir(out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (tmp / "task.json").write_text(json.dumps({"kind": "retrieval", "retriever": desc, "primary": PRIMARY}, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        with open(tmp / "run.tsv", "w", encoding="utf-8") as f:
            for qid, ranked in run.items():
                f.writelines(f"{qid}\t{d}\t{r}\t{s:.6f}\n" for r, (d, s) in enumerate(ranked, 1))
        for name, rows in (("rerank.tsv", both), ("dev-rerank.tsv", dev_both)):
            if rows:
                with open(tmp / name, "w", encoding="utf-8") as f:
                    f.write("query\tdoc\tfirst_stage\treranker\n")
                    f.writelines(f"{q}\t{d}\t{a:.6f}\t{b:.6f}\n" for q, d, a, b in rows)
    return RetrievalEval(Path(out), metrics)


def _weight(value: float | str, rerank: object, dev_queries: str | Path | None, dev_qrels: str | Path | None) -> float | None:
    """The fusion weight the flags ask for, None for "auto" (chosen on dev queries); one-line errors otherwise,
    before any model loads."""
    if str(value).strip().lower() == "auto":
        if rerank is None:
            raise EncoderforgeError("--rerank-weight auto fuses a re-ranker's scores: pass --rerank RUN too")
        if dev_queries is None or dev_qrels is None:
            raise EncoderforgeError(
                "--rerank-weight auto chooses the weight on dev queries: pass --dev-queries FILE and --dev-qrels FILE"
            )
        for path, flag in ((dev_queries, "--dev-queries"), (dev_qrels, "--dev-qrels")):
            if not Path(path).is_file():
                raise EncoderforgeError(f"{flag} {path}: no such file; pass the dev split's queries JSONL / qrels TSV")
        return None
    if dev_queries is not None or dev_qrels is not None:
        raise EncoderforgeError("--dev-queries / --dev-qrels choose --rerank-weight auto; pass --rerank-weight auto or drop them")
    try:
        w = float(value)
    except ValueError:
        raise EncoderforgeError(f"--rerank-weight must be a number in [0, 1] or auto, got {value!r}") from None
    if not 0 <= w <= 1:
        raise EncoderforgeError(f"--rerank-weight must be in [0, 1] (1 = the re-ranker alone) or auto, got {value}")
    if w != 1 and rerank is None:
        raise EncoderforgeError(f"--rerank-weight {value} fuses a re-ranker's scores: pass --rerank RUN too")
    return w


def _dev_queries(dev_queries: str | Path | None, dev_qrels: str | Path | None) -> tuple[dict, list[Doc]]:
    """The dev qrels and the dev queries judged in them (an error when none is)."""
    judged = read_qrels(cast(Path, dev_qrels))
    every = read_docs(cast(Path, dev_queries), what="dev queries")
    qs = [q for q in every if q.id in judged]
    if not qs:
        raise EncoderforgeError(
            f"none of the {len(every)} queries of --dev-queries {dev_queries} has judgements in --dev-qrels {dev_qrels}; "
            "check the query ids"
        )
    return judged, qs


def _search(
    qs: Sequence[Doc], retriever: Retriever, reranker: Callable | None, k: int, depth: int, weight: float
) -> tuple[dict[str, list[tuple[str, float]]], list[tuple[str, str, float, float]], list[float]]:
    """Each query's top k (re-ranked top `depth` fused at `weight`), both scores of every re-ranked candidate, and
    the seconds each query took."""
    run: dict[str, list[tuple[str, float]]] = {}
    both: list[tuple[str, str, float, float]] = []  # (query, doc, first-stage score, re-ranker score)
    latency = []
    for q in qs:
        t0 = time.perf_counter()
        hits = retriever.search([q.text], max(k, depth if reranker else 0))
        ranked = list(zip(hits.ids[0], hits.scores[0]))
        if reranker is not None:
            top = ranked[:depth]
            scores = reranker(q.text, [d for d, _ in top])
            fused = fuse([s for _, s in top], scores, weight)
            ranked = below(sorted(zip([d for d, _ in top], fused.tolist()), key=lambda x: -x[1]), ranked[depth:])
            both += [(q.id, d, s, r) for (d, s), r in zip(top, scores)]
        run[q.id] = ranked[:k]
        latency.append(time.perf_counter() - t0)
    return run, both, latency


def _retriever(  # noqa: ANN001
    index, model, bm25, docs, *, pooling: str, max_length: int | None, dims: int | None = None, layers: int | None = None
) -> Retriever:
    """The one retriever the flags name."""
    if index is not None:
        return open_index(index, model=model, pooling=pooling if model else None)
    if bm25:
        return BM25Retriever(BM25Index.build([d.id for d in docs], [d.text for d in docs]), "in memory")
    return exact_retriever(docs, load_embedder(model, pooling=pooling, max_length=max_length, dims=dims, layers=layers))


def below(top: list[tuple[str, float]], tail: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """A re-ranked top followed by the retriever's tail, the tail's scores shifted (order and gaps kept) to sit
    below the top's lowest: re-ranker or fused scores and the retriever's live on different scales."""
    if not top or not tail:
        return top + tail
    shift = max(0.0, max(s for _, s in tail) - min(s for _, s in top) + 1.0)
    return top + [(d, s - shift) for d, s in tail]


def _reranker(run: str | Path, texts: dict[str, str]) -> Callable[[str, Sequence[str]], list[float]]:
    """score(query, doc ids) with a fine-tuned pair model: a `rerank` run's score, P(label "1") of a 0/1 classifier,
    or a regressor's value."""
    p = Predictor.load(run)
    kind, labels = p.meta.get("kind"), [str(x) for x in p.meta.get("labels", [])]
    where = Path(run) / "task.json"
    if p.meta.get("text_fields", 1) != 2:
        raise EncoderforgeError(
            f"{where}: the re-ranker must read text pairs (text_fields 2); fine-tune it on query/document pairs"
        )
    if kind == "classify" and sorted(labels) != ["0", "1"]:
        raise EncoderforgeError(
            f'{where}: a classify re-ranker needs labels "0"/"1" (got {labels}); fine-tune on relevant=1, not=0'
        )
    if kind not in ("classify", "regress", "rerank"):
        raise EncoderforgeError(
            f"{where}: a {kind!r} run cannot re-rank; pass a `rerank` run (or a pair `classify` 0/1 or `regress` run)"
        )
    if not texts:
        raise EncoderforgeError("re-ranking needs document texts: pass --corpus (the index stores none)")

    def clean(t: str) -> str:
        return " ".join(t.split())  # a TAB or newline inside a text would break the `a<TAB>b` pair format

    def score(query: str, ids: Sequence[str]) -> list[float]:
        missing = [i for i in ids if i not in texts]
        if missing:
            raise EncoderforgeError(f"document {missing[0]!r} has no text in --corpus; pass the corpus the index was built from")
        preds = p.predict([f"{clean(query)}\t{clean(texts[i])}" for i in ids])
        key = {"rerank": "score", "regress": "value"}.get(str(kind))
        return [float(x[key]) if key else float(x["scores"]["1"]) for x in preds]

    return score
