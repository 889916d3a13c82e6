"""Corpus JSONL -> a saved index, embedding in resumable shards.

    DIR/.partial/shard-00000.npy    (S, D) float32 unit vectors of the shard's S documents (S = shard_size)
    DIR/.partial/shard-00000.json   {"ids": [...], "meta": [...]} of the same documents, in corpus order
    DIR/.partial/progress.json      {"key": what the shards depend on, "done": shards complete}

Every shard file is written atomically and `progress.json` only after both, so a build killed at any point resumes
at the first shard not recorded as done; a changed corpus, model or setting (the key) starts over. The final
index replaces DIR in one rename (fileio.atomic_dir), which also drops .partial/.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file, file_digest
from encoderforge.index.bm25 import BM25Index
from encoderforge.index.dense import DenseIndex, resolve_kind
from encoderforge.index.embedder import Embedder, check_compatible
from encoderforge.index.manifest import MANIFEST
from encoderforge.index.readers import Doc, check_docs, iter_docs, read_docs

SHARD_SIZE = 10_000
PARTIAL = ".partial"


def check_build_target(out: Path, shard_size: int, overwrite: bool) -> None:
    """Refuse before any work: a bad shard size, an existing index without `overwrite`, or a directory that is not
    an index (or a resumable build's leftovers) — never deleted."""
    if shard_size < 1:
        raise EncoderforgeError(f"--shard-size must be >= 1, got {shard_size}")
    if (out / MANIFEST).exists() and not overwrite:
        raise EncoderforgeError(f"{out}: already holds an index; pass --overwrite to rebuild it or choose another output")
    if out.is_dir() and any(p.name not in (PARTIAL, MANIFEST) for p in out.iterdir()) and not (out / MANIFEST).exists():
        raise EncoderforgeError(f"{out}: exists and is not an index; encoderforge never deletes it — choose another output")


IVF_TRAIN_MAX = 100_000  # training sample for ivfpq: enough for ~1,000 lists x 39 points and every PQ codebook


@dataclass
class BuildResult:
    """What `build_index` did: documents indexed, the kind, shards in all and shards embedded by this call."""

    out: Path
    count: int
    kind: str
    shards: int
    shards_embedded: int
    seconds: float
    precision: str = "fp32"  # what the embedding GEMMs ran in
    note: str = ""  # why a requested precision or kernel was not used ("" when it was)


def build_index(
    corpus: str | Path,
    out: str | Path,
    embedder: Embedder | None,
    *,
    kind: str = "auto",
    shard_size: int = SHARD_SIZE,
    store_text: bool = True,
    overwrite: bool = False,
) -> BuildResult:
    """Validate the corpus, embed it shard by shard (resuming a killed build), build and save the index.

    Args:
        corpus: JSONL of {"id", "text", ...metadata}.
        out: the index directory.
        embedder: the model (None only for kind "bm25").
        kind: auto | flat | hnsw | ivfpq | bm25.
        shard_size: documents per embedded shard (the unit of resumption).
        store_text: keep each text in its metadata (what `index search` prints).
        overwrite: replace an existing index at `out`.
    Returns:
        BuildResult.
    """
    t0, out = time.perf_counter(), Path(out)
    check_build_target(out, shard_size, overwrite)
    count = check_docs(corpus)
    if kind == "bm25":
        docs = read_docs(corpus)
        BM25Index.build([d.id for d in docs], [d.text for d in docs], [doc_meta(d, store_text) for d in docs]).save(out)
        return BuildResult(out, count, "bm25", 0, 0, time.perf_counter() - t0)
    if embedder is None:
        raise EncoderforgeError("a dense index needs a model; pass --model")
    kind = resolve_kind(kind, count)
    partial, spec = out / PARTIAL, embedder.spec
    key = {"corpus": file_digest(corpus), "embed": asdict(spec), "shard_size": shard_size, "store_text": store_text}
    key["precision"] = embedder.engine.precision  # shards of one precision only
    done = resume_point(partial, key)
    shards = math.ceil(count / shard_size)
    embedded = 0
    for s, docs in enumerate(chunks(iter_docs(corpus), shard_size)):
        if s < done:
            continue  # embedded by an earlier, interrupted run
        write_shard(
            partial, s, [d.id for d in docs], [doc_meta(d, store_text) for d in docs], embedder.embed([d.text for d in docs])
        )
        with atomic_file(partial / "progress.json") as f:
            json.dump({"key": key, "done": s + 1}, f)
        embedded += 1
    train = _train_sample(partial, shards) if kind == "ivfpq" else None
    index = DenseIndex.create(spec.dim, kind, spec=spec, train=train)
    for s in range(shards):
        ids, meta, vecs = read_shard(partial, s)
        index.add(ids, vecs, meta)
    index.save(out)
    e = embedder.engine
    return BuildResult(out, count, kind, shards, embedded, time.perf_counter() - t0, e.precision, "; ".join(e.notes))


def add_documents(index_dir: str | Path, corpus: str | Path, embedder: Embedder, *, store_text: bool = True) -> int:
    """Embed a corpus file into an existing dense index and save it (atomically). Returns the number added."""
    index = DenseIndex.load(index_dir)
    if index.spec is not None:
        check_compatible(index.spec, embedder.spec, str(Path(index_dir) / MANIFEST))
    docs = read_docs(corpus)
    for d in docs:
        if d.id in index.iid:
            raise EncoderforgeError(
                f"{corpus}:{d.line}: id {d.id!r} is already in {index_dir}; delete it first "
                f"(`encoderforge index delete {index_dir} {d.id}`) or give the document another id"
            )
    for chunk in chunks(iter(docs), SHARD_SIZE):
        index.add([d.id for d in chunk], embedder.embed([d.text for d in chunk]), [doc_meta(d, store_text) for d in chunk])
    index.save(index_dir)
    return len(docs)


def write_shard(partial: Path, s: int, ids: list[str], meta: list[dict], vecs: np.ndarray) -> None:
    """One shard's vectors and ids/metadata, each file written atomically."""
    with atomic_file(partial / f"shard-{s:05d}.npy", "wb") as f:
        np.save(f, vecs.astype(np.float32))
    with atomic_file(partial / f"shard-{s:05d}.json", encoding="utf-8") as f:
        json.dump({"ids": ids, "meta": meta}, f, ensure_ascii=False)


def read_shard_rows(partial: Path, s: int) -> tuple[list[str], list[dict]]:
    """(ids, metadata) of shard `s`, without its vectors."""
    rows = json.loads((partial / f"shard-{s:05d}.json").read_text(encoding="utf-8"))
    return rows["ids"], rows["meta"]


def read_shard(partial: Path, s: int) -> tuple[list[str], list[dict], np.ndarray]:
    """(ids, metadata, (S, D) vectors) of shard `s`."""
    return *read_shard_rows(partial, s), np.load(partial / f"shard-{s:05d}.npy")


def resume_point(partial: Path, key: dict) -> int:
    """Shards already embedded for the same key; any other .partial/ is stale and removed."""
    progress = partial / "progress.json"
    if progress.is_file():
        try:
            state = json.loads(progress.read_text(encoding="utf-8"))
        except ValueError:
            state = {}
        if state.get("key") == key:
            return int(state.get("done", 0))
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return 0


def _train_sample(partial: Path, shards: int) -> np.ndarray:
    """Up to IVF_TRAIN_MAX vectors spread evenly over all shards (a sample of the first shard would miss topics)."""
    per = max(1, IVF_TRAIN_MAX // max(shards, 1))
    parts = []
    for s in range(shards):
        v = np.load(partial / f"shard-{s:05d}.npy", mmap_mode="r")
        parts.append(np.asarray(v[np.linspace(0, len(v) - 1, min(per, len(v))).astype(int)]))
    return np.concatenate(parts)


def doc_meta(d: Doc, store_text: bool) -> dict:
    return {**d.meta, "text": d.text} if store_text else dict(d.meta)


def chunks(docs: Iterator[Doc], size: int) -> Iterator[list[Doc]]:
    while chunk := list(itertools.islice(docs, size)):
        yield chunk
