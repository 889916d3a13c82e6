"""Where IVF-PQ loses recall: its inverted lists (nprobe) or its 48-byte codes? Recall@10 against exact search of the
same vectors, for IVF-PQ alone and with faiss' IndexRefine re-scoring k_factor x 10 candidates from 8-bit scalar-quantised
copies of the vectors (384 more bytes per vector), at several nprobe.

Vectors: the first --n rows of a flat index built by `encoderforge index build` (docs/results.md, issue 17, fifteenth
session: 1M real passages, MiniLM-L6, 64 tokens); queries: --queries WordNet lemmas (seeded shuffle), embedded by
MiniLM-L6 at 64 tokens (the model and length that built that index; another index needs another model here). IVF-PQ is `index build --kind ivfpq`'s own (index/dense.py `_ivfpq`), trained on a seeded sample
of --train vectors (`index build` takes up to 100,000). One thread; ms/query = one batched search / queries.

    python benchmarks/ivfpq_refine.py --flat runs/bench-index/passages/flat --n 100000 --queries 500
"""

from __future__ import annotations

import argparse
import random
import time

import faiss
import numpy as np
import torch
from index_latency import wordnet

from encoderforge.index.dense import _ivfpq
from encoderforge.index.embedder import load_embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flat", required=True, help="a flat index directory (index.faiss of IndexIDMap2(IndexFlatIP))")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--nprobe", default="16,32,64")
    ap.add_argument("--k-factors", default="4,10,20")
    a = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    outer = faiss.read_index(f"{a.flat}/index.faiss")  # kept alive while its inner index's memory is read
    inner = faiss.downcast_index(outer.index)
    x = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)[: a.n].copy()
    del inner, outer
    d = x.shape[1]
    lemmas = wordnet()[1]
    random.Random(0).shuffle(lemmas)
    q = load_embedder("minilm-l6", max_length=64).embed(lemmas[: a.queries])
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(q, 10)  # (Q, 10)

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(r) & set(t)) / 10 for r, t in zip(ids.tolist(), truth.tolist())]))

    train = x[np.random.default_rng(0).choice(len(x), min(a.train, len(x)), replace=False)]
    pq, _ = _ivfpq(d, train)  # the IVF-PQ `index build --kind ivfpq` makes from this training sample
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(train)
    refine = faiss.IndexRefine(pq, sq)  # both trained: adding fills both
    refine.add(x)
    print(f"{len(x):,} vectors, {len(q)} queries, {pq.nlist} lists, {pq.pq.M} x 8-bit codes")
    print(
        "| nprobe | IVF-PQ recall@10 | ms/query | "
        + " | ".join(f"+ refine x{k}: recall, ms" for k in a.k_factors.split(","))
        + " |"
    )
    for npb in map(int, a.nprobe.split(",")):
        pq.nprobe = npb
        t = time.perf_counter()
        _, ids = pq.search(q, 10)
        row = [f"{recall(ids):.3f}", f"{(time.perf_counter() - t) / len(q) * 1e3:.2f}"]
        for kf in map(float, a.k_factors.split(",")):
            refine.k_factor = kf
            t = time.perf_counter()
            _, ids = refine.search(q, 10)
            row.append(f"{recall(ids):.3f}, {(time.perf_counter() - t) / len(q) * 1e3:.2f}")
        print(f"| {npb} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
