"""Index latency and recall on real text: WordNet glosses (117k synset definitions in /usr/share/wordnet, the
`wordnet-base` Debian package) or a passage corpus (--corpus JSONL) embedded by `index build`, searched with WordNet
lemmas as queries.

    python benchmarks/index_latency.py --n 100000 --threads 2 --out runs/bench-index/results.json
    # 100k and 1M rows from one build of benchmarks/prepare_passages.py's 1M real passages (resumable: --work)
    python benchmarks/index_latency.py --corpus runs/data/passages/corpus.jsonl --n 1000000 --sizes 100000,1000000 \
        --work runs/bench-index/passages --throughput-n 0 --train-sample 256000 --out runs/bench-index/passages.json

Reports, per index kind (flat = exact, hnsw, ivfpq): build seconds, size on disk (MB), search latency per query
(one query at a time, k=10) p50/p99, and recall@10 against the exact flat search. And the `index build` embedding
throughput vs sentence-transformers `SentenceTransformer(path).encode` on the same texts, interleaved rounds,
medians and their ratio. With --sizes, every index kind is built and searched over each prefix of the one embedded
corpus (the passages are shuffled, so a prefix mixes every source); exact search = flat over the same prefix.
With --work the embedded corpus is kept there and a killed run resumes its build shard by shard.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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
    ap.add_argument("--corpus", type=Path, help="JSONL {id, text} documents instead of WordNet glosses")
    ap.add_argument("--sizes", help="comma-separated prefix sizes to index and search (default: --n)")
    ap.add_argument("--work", type=Path, help="keep the embedded corpus here (a killed build resumes)")
    ap.add_argument("--precision", default="fp32", help="embedding GEMM precision (fp32, bf16, auto)")
    ap.add_argument("--train-sample", type=int, default=100_000, help="vectors that train IVF-PQ's codebooks")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-index/results.json"))
    a = ap.parse_args()
    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    glosses, lemmas = wordnet()
    rng = random.Random(0)
    queries = [lemmas[i] for i in rng.sample(range(len(lemmas)), a.queries)]
    if a.corpus:
        docs = [json.loads(line) for line in a.corpus.read_text(encoding="utf-8").splitlines()][: a.n]
    else:
        docs = [{"id": f"g{i}", "text": t} for i, t in enumerate(glosses[: a.n])]
    n = len(docs)
    sizes = [min(int(x), n) for x in a.sizes.split(",")] if a.sizes else [n]
    result: dict = {
        "n": n,
        "sizes": sizes,
        "queries": len(queries),
        "threads": a.threads,
        "model": a.model,
        "max_length": a.max_length,
        "precision": a.precision,
        "corpus": str(a.corpus or "wordnet glosses"),
    }
    if a.throughput_n:
        result["throughput"] = throughput([d["text"] for d in docs[: a.throughput_n]], a.model, a.max_length, a.rounds)
        print(json.dumps(result["throughput"]), flush=True)
    emb = load_embedder(a.model, max_length=a.max_length, precision=a.precision)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.jsonl"
        if not corpus.exists():
            corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
        if not (work / "flat" / "manifest.json").exists():
            t0 = time.perf_counter()
            built = build_index(corpus, work / "flat", emb, kind="flat", store_text=False)
            result["index_build"] = {
                "seconds": round(built.seconds, 1),
                "docs_per_s": round(n / built.seconds, 1),
                "precision": built.precision,
                "wall_s_this_run": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(result["index_build"]), flush=True)
        full = DenseIndex.load(work / "flat")
        all_ids = list(full.iid)
        all_vecs = full.reconstruct(all_ids)
        del full
        qv = emb.embed(queries)
        result["rows"] = []
        for size in sizes:
            ids, vecs = all_ids[:size], all_vecs[:size]
            exact = None
            for kind in a.kinds.split(","):
                t0 = time.perf_counter()
                if kind == "ivfpq":
                    sample = vecs[np.random.default_rng(0).choice(size, min(size, a.train_sample), replace=False)]
                    idx = DenseIndex.create(vecs.shape[1], kind, spec=emb.spec, train=sample)
                else:
                    idx = DenseIndex.create(vecs.shape[1], kind, spec=emb.spec)
                idx.add(ids, vecs)
                build_s = time.perf_counter() - t0
                idx.save(Path(tmp) / kind)
                stats, found = search_stats(idx, qv, exact, a.k)
                if kind == "flat":
                    exact = found
                    stats[f"recall@{a.k}_vs_flat"] = 1.0
                row = {
                    "n": size,
                    "kind": kind,
                    "build_s": round(build_s, 2),
                    "size_mb": round(dir_mb(Path(tmp) / kind), 2),
                    **stats,
                    **idx.params,
                }
                shutil.rmtree(Path(tmp) / kind)
                del idx
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
