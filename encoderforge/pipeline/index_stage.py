"""The `index` stage: search the domain's documents with the model the pipeline fine-tuned, and measure whether it
beats BM25 and the untrained base model on the same judged queries (config: pipeline/index_config.py).

    RUN/index/corpus.jsonl   the documents searched ({"id", "text"}), after the max_docs cap
    RUN/index/queries.jsonl  the judged queries ({"id", "text"}); RUN/index/qrels.tsv their judgements
    RUN/index/dense/         the fine-tuned model's faiss index (`encoderforge index search RUN/index/dense "..."`)
    RUN/index/dense.json     what dense/ was built from (corpus sha256, EmbedSpec, kind): a rerun reuses a match
    RUN/index/rotated/       with index.dims: the fine-tuned model rotated to the corpus (`index rotate`), cut to dims
    RUN/index/eval/<name>/   one `eval-retrieval` run per retriever: finetuned, finetuned-cut (index.dims), base, bm25

The stage's metrics.json copies each run's test metrics and latency, so the report and these runs cannot disagree.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file, file_digest
from encoderforge.index.manifest import MANIFEST
from encoderforge.index.readers import Doc, read_docs, read_qrels
from encoderforge.pipeline.config import PipelineConfig
from encoderforge.pipeline.index_config import LICENSE_CORPUS, IndexStage
from encoderforge.pipeline.stages import read_split

# eval-retrieval's metrics the stage records per retriever (its metrics.json has recall@1 and @100 too)
KEPT = ("ndcg@10", "mrr@10", "recall@10")


def license_corpus() -> list[Doc]:
    """Every licensedcode-data license text as a document: id = license key, text = the body without its YAML front
    matter, whitespace collapsed; a text identical (case-insensitively) to an earlier key's is dropped, as in
    benchmarks/legal_retrieval.py, so that no query has two indistinguishable answers."""
    from encoderforge.data.datasets import license_parts, license_texts

    docs, seen = [], set()
    for path in license_texts():
        body = (license_parts(path) or ("", ""))[1]
        if body and body.lower() not in seen:
            seen.add(body.lower())
            docs.append(Doc(id=path.stem, text=body))
    return docs


def split_queries(test_file: str | Path) -> tuple[list[Doc], dict[str, dict[str, int]]]:
    """The data stage's test split as judged queries: each snippet's labels (license keys) are its relevant
    documents, relevance 1. Ids are test-<line>, stable across reruns."""
    texts, labels = read_split(test_file)
    queries, qrels = [], {}
    for n, (text, label) in enumerate(zip(texts, labels), 1):
        qid = f"test-{n:05d}"
        queries.append(Doc(id=qid, text=text))
        qrels[qid] = {str(k): 1 for k in (label if isinstance(label, list) else [label])}
    return queries, qrels


def cap_corpus(docs: list[Doc], relevant: set[str], max_docs: int, seed: int) -> list[Doc]:
    """At most `max_docs` documents (0 = all): every relevant one (a cap that dropped answers would measure nothing,
    so a cap below their number keeps just them), then a seeded sample of the rest; corpus order is kept."""
    if not max_docs or len(docs) <= max_docs:
        return docs
    rest = [i for i, d in enumerate(docs) if d.id not in relevant]
    room = max(0, max_docs - (len(docs) - len(rest)))
    keep = set(random.Random(seed).sample(rest, min(room, len(rest))))
    return [d for i, d in enumerate(docs) if d.id in relevant or i in keep]


def write_inputs(
    stage_dir: Path, docs: list[Doc], queries: list[Doc], qrels: dict[str, dict[str, int]]
) -> tuple[Path, Path, Path]:
    """The corpus, queries and qrels every retriever is evaluated on, written atomically into the stage directory."""
    paths = stage_dir / "corpus.jsonl", stage_dir / "queries.jsonl", stage_dir / "qrels.tsv"
    for path, rows in ((paths[0], docs), (paths[1], queries)):
        with atomic_file(path, encoding="utf-8") as f:
            f.writelines(json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n" for d in rows)
    with atomic_file(paths[2], encoding="utf-8") as f:
        f.writelines(f"{q.id}\t{d}\t{r}\n" for q in queries for d, r in qrels[q.id].items())
    return paths


def gather(cfg: IndexStage, test_file: str | None) -> tuple[list[Doc], list[Doc], dict[str, dict[str, int]], int]:
    """(documents, queries, their qrels, queries dropped): queries keep only judgements of documents in the corpus,
    and a query with no relevant document left is dropped (it could only score zero, whatever the model)."""
    docs = license_corpus() if cfg.corpus == LICENSE_CORPUS else read_docs(cfg.corpus)
    if cfg.queries is not None and cfg.qrels is not None:
        queries, judged = read_docs(cfg.queries, what="queries"), read_qrels(cfg.qrels)
    elif test_file:
        queries, judged = split_queries(test_file)
    else:  # load_pipeline checked that one of them is there
        raise EncoderforgeError("index needs queries: set index.queries and index.qrels, or turn on the data stage")
    ids = {d.id for d in docs}
    judged = {q: {d: r for d, r in rels.items() if d in ids} for q, rels in judged.items()}
    kept = [q for q in queries if any(r > 0 for r in judged.get(q.id, {}).values())]
    if not kept:
        where = f"{cfg.queries} + {cfg.qrels}" if cfg.queries else "the data stage's test split"
        raise EncoderforgeError(
            f"index: none of the {len(queries)} queries of {where} has a relevant document in the corpus "
            f"({cfg.corpus}); judge them against the corpus' ids or choose the corpus they were judged on"
        )
    relevant = {d for q in kept for d, r in judged[q.id].items() if r > 0}
    docs = cap_corpus(docs, relevant, cfg.max_docs, cfg.seed)
    return docs, kept, {q.id: judged[q.id] for q in kept}, len(queries) - len(kept)


def build_dense(cfg: PipelineConfig, stage_dir: Path, corpus: Path) -> dict[str, Any]:
    """The fine-tuned model's faiss index of the corpus: resumed shard by shard by build_index after a kill, and not
    rebuilt at all when dense.json says an index of the same corpus, model and settings is already there."""
    from encoderforge.index.build import build_index
    from encoderforge.index.embedder import load_embedder

    ix, ft = cfg.index, cfg.finetune
    assert ix is not None and ft is not None  # load_pipeline checked
    run = cfg.run_dir / "finetune"
    # an `embed` run is an embedding model with its own pooling and length (task.json); any other task's run is a
    # classifier whose encoder we search with as a plain encoder
    emb = load_embedder(run if ft.task == "embed" else run / "model", pooling=ix.pooling, max_length=ix.max_length)
    dense, record = stage_dir / "dense", stage_dir / "dense.json"
    key = {"corpus": file_digest(corpus), "embed": asdict(emb.spec), "kind": ix.kind}
    t0 = time.perf_counter()
    old = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    built = not ((dense / MANIFEST).is_file() and old.get("key") == key)
    if built:
        res = build_index(corpus, dense, emb, kind=ix.kind, overwrite=True)
        old = {"key": key, "kind": res.kind, "count": res.count, "seconds": round(res.seconds, 2)}
        with atomic_file(record) as f:
            json.dump(old, f, indent=2)
    return {
        "kind": old["kind"],
        "path": str(dense),
        "mb": round(sum(p.stat().st_size for p in dense.rglob("*") if p.is_file()) / 2**20, 2),
        "model": emb.spec.model,
        "dim": emb.spec.dim,
        "max_length": emb.spec.max_length,
        "pooling": emb.spec.pooling,
        "build_s": round(time.perf_counter() - t0, 2) if built else old["seconds"],
        "reused": not built,
    }


def rotate_finetuned(cfg: PipelineConfig, stage_dir: Path, corpus: Path) -> Path:
    """The fine-tuned model rotated to the corpus and cut to index.dims (recipes/index_rotate.py), in the stage's own
    RUN/index/rotated/: reused while rotation.json names the same corpus, model and dims, else made again."""
    import shutil

    from encoderforge.recipes.index_rotate import index_rotate

    ix, ft = cfg.index, cfg.finetune
    assert ix is not None and ft is not None  # load_pipeline checked
    run = cfg.run_dir / "finetune"
    model = run if ft.task == "embed" else run / "model"
    out = stage_dir / "rotated"
    info = json.loads((out / "rotation.json").read_text(encoding="utf-8")) if (out / "rotation.json").is_file() else {}
    task = json.loads((out / "task.json").read_text(encoding="utf-8")) if (out / "task.json").is_file() else {}
    asked = {"pooling": ix.pooling, "max_length": ix.max_length}
    same = info.get("corpus_sha256") == file_digest(corpus) and info.get("source") == str(model.resolve())
    if same and task.get("dims") == ix.dims and info.get("asked") == asked and info.get("model_hash") == _weights_hash(model):
        return out
    shutil.rmtree(out, ignore_errors=True)  # the stage's own output, made again from this run's model
    return index_rotate(model, corpus, out, dims=ix.dims, pooling=ix.pooling, max_length=ix.max_length).out


def _weights_hash(model: Path) -> str | None:
    """The model hash `index rotate` records for an unrotated model: its weights file's sha256."""
    from encoderforge.index.embedder import checkpoint_of, weights_digest, weights_file

    w = weights_file(checkpoint_of(model))
    return weights_digest(str(w)) if w else None


def run_index(cfg: PipelineConfig, stage_dir: Path) -> dict[str, Any]:
    """Write the stage's inputs, build the fine-tuned index and evaluate every retriever (module docstring); torch's
    thread count is restored afterwards (eval-retrieval sets it process-wide).

    Returns:
        {"corpus", "queries", "index", "retrievers": {row name: {"role", ndcg@10, mrr@10, recall@10, p50_ms,
        p99_ms, "run", "seconds"}}, "seconds"}: the stage's metrics.json.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        if cfg.index is not None and cfg.index.threads:
            torch.set_num_threads(cfg.index.threads)
        return _run_index(cfg, stage_dir)
    finally:
        torch.set_num_threads(threads)


def _run_index(cfg: PipelineConfig, stage_dir: Path) -> dict[str, Any]:
    import torch

    from encoderforge.recipes.eval_retrieval import eval_retrieval

    ix, ft = cfg.index, cfg.finetune
    assert ix is not None and ft is not None  # load_pipeline checked
    t0 = time.perf_counter()
    test = str(cfg.run_dir / "data" / "test.jsonl") if cfg.data is not None else None
    docs, queries, qrels, dropped = gather(ix, test)
    corpus, qfile, qrels_file = write_inputs(stage_dir, docs, queries, qrels)
    index = build_dense(cfg, stage_dir, corpus)
    base = Path(cfg.base_model).name or cfg.base_model
    runs: list[tuple[str, str, dict[str, Any]]] = [("fine-tuned", "finetuned", {"index": stage_dir / "dense"})]
    if ix.dims:  # exact search over the rotated, cut vectors: what a smaller index of them would find
        name = f"fine-tuned, first {ix.dims} of {index['dim']} dims (rotated)"
        runs.append((name, "finetuned-cut", {"corpus": corpus, "model": str(rotate_finetuned(cfg, stage_dir, corpus))}))
    if ix.base:  # exact search, as eval-retrieval scores any model without an index
        base_kw = {"corpus": corpus, "model": cfg.base_model, "pooling": ix.pooling, "max_length": ix.max_length}
        runs.append((f"base model ({base})", "base", base_kw))
    if ix.bm25:
        runs.append(("BM25", "bm25", {"corpus": corpus, "bm25": True}))
    retrievers: dict[str, Any] = {}
    for name, role, kw in runs:
        t1 = time.perf_counter()
        # overwrite: a rerun of this stage (killed, or with another config) replaces its own earlier evaluation
        m = eval_retrieval(qfile, qrels_file, stage_dir / "eval" / role, k=ix.k, overwrite=True, **kw).metrics
        retrievers[name] = {
            "role": role,
            **{k: m["test"][k] for k in KEPT},
            "p50_ms": m["latency_ms"]["p50"],
            "p99_ms": m["latency_ms"]["p99"],
            "retriever": m["retriever"],
            "run": str(stage_dir / "eval" / role),
            "seconds": round(time.perf_counter() - t1, 2),
        }
    return {
        "corpus": {"source": ix.corpus, "documents": len(docs), "max_docs": ix.max_docs, "file": str(corpus)},
        "queries": {
            "source": ix.queries or "data stage test split",
            "count": len(queries),
            "dropped": dropped,
            "relevant_per_query": round(sum(len(r) for r in qrels.values()) / len(qrels), 3),
        },
        "index": index,
        "primary": "ndcg@10",
        "retrievers": retrievers,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
