"""The 2D Matryoshka quality / speed table: one embedding model cut to its first L layers and D dimensions, on a
retrieval set's test split (exact search): nDCG@10, MRR@10, and the corpus embedding throughput (documents/s, the
cost the layer cut saves; the dimension cut saves index size and search time instead).

    python benchmarks/matryoshka_2d.py runs/embed/bbc-2d runs/data/retrieval/bbc --layers 2,4,6 --dims 48,96,192,384

Each layer count embeds the corpus and the queries once (encoderforge.index.embedder.load_embedder(layers=L)); every
width is scored from those vectors cut to D and re-normalised, as `eval-retrieval --layers L --dims D` does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from encoderforge.index.embedder import load_embedder
from encoderforge.index.metrics import evaluate_run
from encoderforge.index.readers import read_docs, read_qrels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an embed run (or a plain model)")
    ap.add_argument("set_dir", type=Path, help="corpus.jsonl, test.queries.jsonl, test.qrels.tsv")
    ap.add_argument("--layers", default="2,4,6")
    ap.add_argument("--dims", default="48,96,192,384")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    docs = read_docs(a.set_dir / "corpus.jsonl")
    qrels = read_qrels(a.set_dir / "test.qrels.tsv")
    queries = [q for q in read_docs(a.set_dir / "test.queries.jsonl", what="queries") if q.id in qrels]
    ids = [d.id for d in docs]
    print(f"{a.model} on {a.set_dir.name}: {len(docs)} documents, {len(queries)} test queries, {a.threads} threads")
    print("| layers | dims | nDCG@10 | MRR@10 | corpus docs/s |")
    print("|---|---|---|---|---|")
    for layers in map(int, a.layers.split(",")):
        emb = load_embedder(a.model, layers=layers, dims=None)
        t0 = time.perf_counter()
        dv = emb.embed([d.text for d in docs])
        rate = len(docs) / (time.perf_counter() - t0)
        qv = emb.embed([q.text for q in queries])
        for dims in map(int, a.dims.split(",")):
            cut = lambda v: v[:, :dims] / np.linalg.norm(v[:, :dims], axis=1, keepdims=True)  # noqa: E731
            scores = cut(qv) @ cut(dv).T  # (Q, D)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
            run = {q.id: {ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(queries)}
            m = evaluate_run(run, {q.id: qrels[q.id] for q in queries}).mean
            print(f"| {layers} | {dims} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
