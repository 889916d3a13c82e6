"""Cross-encoder (reranker) training rows from a retrieval set of benchmarks/prepare_retrieval_data.py: for a seeded
sample of train queries, each relevant document (label "1") and BM25's highest-ranked non-relevant documents of the
TRAIN corpus share (label "0": hard negatives, as in the MS MARCO cross-encoder recipes). Dev rows come the same way
from dev queries. The rows are `encoderforge finetune classify` JSONL with two text fields:

    python benchmarks/prepare_rerank_data.py runs/data/retrieval/bbc --queries 600 --negatives 3
    encoderforge finetune classify --text-field query --text-field doc --train DIR/rerank-train.jsonl ...

Documents are whitespace-collapsed (prediction reads a pair as one `query<TAB>doc` line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from encoderforge.index.bm25 import BM25Index


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def qrels(path: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        q, d, rel = line.split("\t")
        if int(rel) > 0:
            out.setdefault(q, set()).add(d)
    return out


def rows_for(split: str, root: Path, docs: dict[str, str], bm25: BM25Index, n: int, negatives: int, seed: int) -> list[dict]:
    queries = load_jsonl(root / f"{split}.queries.jsonl")
    rel = qrels(root / f"{split}.qrels.tsv")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(queries), size=min(n, len(queries)), replace=False).tolist())
    chosen = [queries[i] for i in pick if queries[i]["id"] in rel]
    hits = bm25.search([q["text"] for q in chosen], k=negatives + 10)
    out = []
    for q, ids in zip(chosen, hits.ids):
        text = " ".join(q["text"].split())
        out += [{"query": text, "doc": docs[d], "label": "1"} for d in sorted(rel[q["id"]])]
        out += [{"query": text, "doc": docs[d], "label": "0"} for d in [i for i in ids if i not in rel[q["id"]]][:negatives]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--queries", type=int, default=600, help="train queries sampled")
    ap.add_argument("--dev-queries", type=int, default=150)
    ap.add_argument("--negatives", type=int, default=3, help="BM25 hard negatives per query")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    corpus = load_jsonl(a.set_dir / "corpus.jsonl")
    docs = {d["id"]: " ".join(d["text"].split()) for d in corpus}
    for split, n in (("train", a.queries), ("dev", a.dev_queries)):
        part = [d for d in corpus if d.get("split", split) == split]  # negatives from the same split's documents
        bm25 = BM25Index.build([d["id"] for d in part], [d["text"] for d in part])
        rows = rows_for(split, a.set_dir, docs, bm25, n, a.negatives, a.seed)
        out = a.set_dir / f"rerank-{split}.jsonl"
        out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        pos = sum(r["label"] == "1" for r in rows)
        print(f"{out}: {len(rows)} rows ({pos} relevant, {len(rows) - pos} BM25 negatives)")


if __name__ == "__main__":
    main()
