"""Index latency and recall on real text: WordNet glosses (117k synset definitions in /usr/share/wordnet, the
`wordnet-base` Debian package) embedded by `index build`, searched with WordNet lemmas as queries.

    python benchmarks/index_latency.py --n 100000 --threads 2 --out runs/bench-index/results.json

Reports, per index kind (flat = exact, hnsw, ivfpq): build seconds, size on disk (MB), search latency per query
(one query at a time, k=10) p50/p99, and recall@10 against the exact flat search. And the `index build` embedding
throughput vs sentence-transformers `SentenceTransformer(path).encode` on the same texts, interleaved rounds,
medians and their ratio. No 1M-text real corpus ships offline, so the 1M row is not run (random vectors would not
measure a real index: their neighbourhoods have no structure).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encoderforge.index.build import build_index
from encoderforge.index.dense import DenseIndex
from encoderforge.index.embedder import load_embedder
from encoderforge.model.zoo import resolve_model

WORDNET = Path("/usr/share/wordnet")


def wordnet() -> tuple[list[str], list[str]]:
    """(glosses, lemma phrases) of every synset, glosses de-duplicated, in file order."""
    glosses, lemmas, seen = [], [], set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the license header
            head, gloss = line.split(" | ", 1)
            gloss = gloss.strip()
            if gloss and gloss not in seen:
                seen.add(gloss)
                glosses.append(gloss)
                lemmas.append(head.split()[4].replace("_", " "))  # synset_offset lex_filenum ss_type w_cnt word ...
    return glosses, lemmas


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def search_stats(index: DenseIndex, queries: np.ndarray, exact: list[list[str]] | None, k: int) -> dict:
    """Latency per query (one at a time) and recall@k against the exact top k."""
    lat, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = index.search(q[None, :], k)
        lat.append(time.perf_counter() - t0)
        found.append(hits.ids[0])
    ms = np.array(lat) * 1000
    out = {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}
    if exact is not None:
        out[f"recall@{k}_vs_flat"] = round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)])), 4)
    return out, found


def throughput(texts: list[str], model: str, max_length: int, rounds: int) -> dict:
    """Texts/s of our embedder (what `index build` runs) vs sentence-transformers, interleaved rounds, medians."""
    from sentence_transformers import SentenceTransformer

    ours = load_embedder(model, max_length=max_length)
    st = SentenceTransformer(str(resolve_model(model)), device="cpu")
    st.max_seq_length = max_length
    ours.embed(texts[:32]), st.encode(texts[:32])  # warm-up
    t_ours, t_st = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a = ours.embed(texts)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = st.encode(texts, batch_size=32, normalize_embeddings=True)
        t_st.append(time.perf_counter() - t0)
    cos = float(np.min(np.sum(a * b, axis=1)))
    o, s = len(texts) / statistics.median(t_ours), len(texts) / statistics.median(t_st)
    return {
        "texts": len(texts),
        "ours_texts_per_s": round(o, 1),
        "st_texts_per_s": round(s, 1),
        "ratio": round(o / s, 3),
        "min_cosine_ours_vs_st": round(cos, 6),
        "rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="documents (WordNet glosses; at most ~117k)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per text (glosses are short)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--throughput-n", type=int, default=2000, help="texts per throughput round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-index/results.json"))
    a = ap.parse_args()
    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    glosses, lemmas = wordnet()
    n = min(a.n, len(glosses))
    rng = random.Random(0)
    queries = [lemmas[i] for i in rng.sample(range(len(lemmas)), a.queries)]
    result: dict = {"n": n, "queries": len(queries), "threads": a.threads, "model": a.model, "max_length": a.max_length}
    result["throughput"] = throughput(glosses[: a.throughput_n], a.model, a.max_length, a.rounds)
    print(json.dumps(result["throughput"]), flush=True)
    emb = load_embedder(a.model, max_length=a.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"g{i}", "text": t}) + "\n" for i, t in enumerate(glosses[:n])))
        t0 = time.perf_counter()
        build_index(corpus, Path(tmp) / "flat", emb, kind="flat", store_text=False)
        result["index_build"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "docs_per_s": round(n / (time.perf_counter() - t0), 1),
        }
        flat = DenseIndex.load(Path(tmp) / "flat")
        ids = list(flat.iid)
        vecs = flat.reconstruct(ids)
        qv = emb.embed(queries)
        exact = None
        result["kinds"] = {}
        for kind in a.kinds.split(","):
            t0 = time.perf_counter()
            if kind == "flat":
                idx = flat
            else:
                sample = vecs[np.random.default_rng(0).choice(len(vecs), min(len(vecs), 100_000), replace=False)]
                idx = DenseIndex.create(vecs.shape[1], kind, spec=emb.spec, train=sample if kind == "ivfpq" else None)
                idx.add(ids, vecs)
            build_s = time.perf_counter() - t0
            idx.save(Path(tmp) / kind)
            stats, found = search_stats(idx, qv, exact, a.k)
            if kind == "flat":
                exact = found
                stats[f"recall@{a.k}_vs_flat"] = 1.0
            row = {"build_s": round(build_s, 2), "size_mb": round(dir_mb(Path(tmp) / kind), 2), **stats, **idx.params}
            result["kinds"][kind] = row
            print(kind, json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
