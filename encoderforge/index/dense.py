"""A dense vector index over faiss: string ids and per-id metadata on top of int64 faiss ids, cosine similarity as
inner product on L2-normalised vectors, atomic saves verified on load.

Kinds (`resolve_kind`): "flat" exact search (IndexFlatIP; the default up to 100k vectors, where a brute-force scan
of 384-d vectors still answers in milliseconds), "hnsw" graph search (IndexHNSWFlat, inner product; the default
above 100k) and "ivfpq" (trained IVF-PQ: about 16x smaller vectors for a little recall, only when asked).
Shapes: N vectors, Q queries, D the vector size, K results per query.

    DIR/index.faiss   the faiss index (faiss.write_index)
    DIR/ids.jsonl     one {"id", "iid", "meta"} per live vector: string id <-> faiss int64 id, metadata
    DIR/manifest.json kind, count, EmbedSpec, sha256 of the two files above (index/manifest.py)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoderforge import EncoderforgeError, require
from encoderforge.fileio import atomic_dir
from encoderforge.index.manifest import MANIFEST, EmbedSpec, Manifest, read_manifest, write_manifest

KINDS = ("flat", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 100_000
INDEX_FILE, IDS_FILE = "index.faiss", "ids.jsonl"
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64  # faiss' usual M; ef values trade build time for recall
IVF_NPROBE = 16


@dataclass
class Hits:
    """Per query, the ids of the best documents (best first) and their cosine similarities."""

    ids: list[list[str]]
    scores: list[list[float]]


def resolve_kind(kind: str, count: int) -> str:
    """ "auto" -> flat up to 100k vectors, hnsw above (ivfpq only when asked); anything else is checked."""
    if kind == "auto":
        return "flat" if count <= AUTO_FLAT_MAX else "hnsw"
    if kind not in KINDS:
        raise EncoderforgeError(f"--kind must be auto, {', '.join(KINDS)} or bm25, got {kind!r}")
    return kind


def _faiss() -> Any:
    return require("faiss", "index")


class DenseIndex:
    """String ids + metadata over a faiss index of unit vectors.

    Example:
        >>> idx = DenseIndex.create(384, "flat")
        >>> idx.add(["a", "b"], vectors, [{"text": "..."}, {"text": "..."}])
        >>> idx.search(queries, k=10).ids[0]   # ['b', 'a']
    """

    def __init__(self, index: Any, kind: str, spec: EmbedSpec | None, params: dict[str, Any] | None = None):
        self.index, self.kind, self.spec = index, kind, spec
        self.params: dict[str, Any] = {"next_iid": 0, **(params or {})}
        self.iid: dict[str, int] = {}  # string id -> faiss int64 id
        self.sid: dict[int, str] = {}  # faiss int64 id -> string id
        self.meta: dict[str, dict] = {}
        # HNSW cannot remove a vector from its graph: deleted ids become tombstones, skipped at search time (we
        # over-fetch K + tombstones so K live results still come back), and the graph is rebuilt from its stored
        # vectors once tombstones outnumber live vectors (`_compact`), which bounds the over-fetch.
        self.dead: set[int] = set()

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self.iid)

    @classmethod
    def create(
        cls, dim: int, kind: str = "flat", *, spec: EmbedSpec | None = None, train: np.ndarray | None = None
    ) -> "DenseIndex":
        """An empty index. ivfpq needs `train` (N, D): its coarse centroids and PQ codebooks are learnt from them.

        Args:
            dim: vector size D.
            kind: flat | hnsw | ivfpq (resolve "auto" with `resolve_kind` first).
            spec: how the vectors are made (checked against queries); None for vectors from elsewhere.
            train: training vectors for ivfpq (at least 256; a sample of the corpus).
        Returns:
            the empty DenseIndex.
        """
        faiss = _faiss()
        kind = resolve_kind(kind, 0)
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index, params["ef_search"] = faiss.IndexIDMap2(inner), HNSW_EF_SEARCH
        else:
            index, params = _ivfpq(dim, _unit(train, dim, "training vectors") if train is not None else None)
        return cls(index, kind, spec, params)

    def add(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        """Add vectors (N, D) under new string ids (an id already present is an error: nothing is added)."""
        if len(ids) != len(vectors) or (metadata is not None and len(metadata) != len(ids)):
            raise EncoderforgeError(
                f"add: {len(ids)} ids, {len(vectors)} vectors, {len(metadata or ids)} metadata rows; pass one of each per document"
            )
        seen: set[str] = set()
        for doc in ids:
            if doc in self.iid or doc in seen:
                raise EncoderforgeError(
                    f"id {doc!r} is already in the index; delete it first (`encoderforge index delete DIR {doc}`) or give the new document another id"
                )
            seen.add(doc)
        x = _unit(vectors, self.dim, "vectors")
        start = int(self.params["next_iid"])
        new = np.arange(start, start + len(ids), dtype=np.int64)  # (N,)
        if len(ids):
            self.index.add_with_ids(x, new)
        for n, (doc, iid) in enumerate(zip(ids, new.tolist())):
            self.iid[doc], self.sid[iid] = iid, doc
            self.meta[doc] = dict(metadata[n]) if metadata is not None else {}
        self.params["next_iid"] = start + len(ids)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by id (an unknown id is an error: nothing is removed)."""
        for s in ids:
            if s not in self.iid:
                raise EncoderforgeError(
                    f"id {s!r} is not in the index (ids are case-sensitive); nothing was deleted — check the id"
                )
        gone = np.array([self.iid[s] for s in ids], dtype=np.int64)
        if self.kind == "hnsw":
            self.dead.update(gone.tolist())
        else:
            self.index.remove_ids(gone)
        for s in ids:
            del self.sid[self.iid.pop(s)]
            self.meta.pop(s, None)
        if self.kind == "hnsw" and len(self.dead) > len(self.iid):
            self._compact()

    def search(self, vectors: np.ndarray, k: int = 10) -> Hits:
        """The k most similar live documents of each query vector (Q, D), best first."""
        if k < 1:
            raise EncoderforgeError(f"-k must be >= 1, got {k}")
        q = _unit(vectors, self.dim, "query vectors")
        total = int(self.index.ntotal)
        if total == 0 or not self.iid:
            return Hits([[] for _ in q], [[] for _ in q])
        fetch = min(k + len(self.dead), total)
        if self.kind == "hnsw":
            _faiss().downcast_index(self.index.index).hnsw.efSearch = max(int(self.params["ef_search"]), fetch)
        scores, iids = self.index.search(q, fetch)  # (Q, fetch) each; -1 where fewer were found
        out = Hits([], [])
        for srow, irow in zip(scores.tolist(), iids.tolist()):
            keep = [(self.sid[i], s) for i, s in zip(irow, srow) if i >= 0 and i not in self.dead][:k]
            out.ids.append([i for i, _ in keep])
            out.scores.append([s for _, s in keep])
        return out

    def reconstruct(self, ids: Sequence[str]) -> np.ndarray:
        """The stored (unit) vectors of `ids` (N, D); flat and hnsw only (ivfpq keeps compressed codes)."""
        if self.kind == "ivfpq":
            raise EncoderforgeError(
                "an ivfpq index stores compressed codes, not vectors; rebuild with --kind flat to read them back"
            )
        return np.stack([self.index.reconstruct(self.iid[s]) for s in ids]) if ids else np.zeros((0, self.dim), np.float32)

    def _compact(self) -> None:
        """Rebuild the HNSW graph from the live vectors (tombstones dropped)."""
        live = sorted(self.sid)
        vecs = np.stack([self.index.reconstruct(i) for i in live]) if live else np.zeros((0, self.dim), np.float32)
        fresh = DenseIndex.create(self.dim, "hnsw", spec=self.spec)
        if live:
            fresh.index.add_with_ids(vecs, np.array(live, dtype=np.int64))
        self.index, self.dead = fresh.index, set()

    def save(self, directory: str | Path) -> Path:
        """Write DIR atomically (a temporary sibling renamed over DIR): a killed save leaves the previous index."""
        faiss = _faiss()
        if self.kind == "hnsw" and self.dead:
            self._compact()  # a saved index never carries tombstones
        with atomic_dir(directory) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            _write_ids(tmp / IDS_FILE, self)
            m = Manifest(kind=self.kind, count=len(self), embed=self.spec, params=self.params)
            write_manifest(tmp, m, [INDEX_FILE, IDS_FILE])
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "DenseIndex":
        """Read an index written by `save`, after checking every file against the manifest's sha256."""
        d = Path(directory)
        m = read_manifest(d)
        if m.kind not in KINDS:
            raise EncoderforgeError(f"{d / MANIFEST}: a {m.kind!r} index, not a dense one; load it with `load_index`")
        idx = cls(_faiss().read_index(str(d / INDEX_FILE)), m.kind, m.embed, m.params)
        with open(d / IDS_FILE, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                idx.iid[row["id"]], idx.sid[row["iid"]] = row["iid"], row["id"]
                idx.meta[row["id"]] = row["meta"]
        if m.kind == "ivfpq":
            idx.index.nprobe = int(m.params.get("nprobe", IVF_NPROBE))
        return idx


def _write_ids(path: Path, idx: DenseIndex) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in sorted(idx.sid):
            s = idx.sid[i]
            f.write(json.dumps({"id": s, "iid": i, "meta": idx.meta.get(s, {})}, ensure_ascii=False) + "\n")


def _unit(x: np.ndarray | None, dim: int, what: str) -> np.ndarray:
    """(N, D) float32 C-contiguous unit rows (cosine = inner product); checks the size and finiteness."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2 or x.shape[1] != dim:
        raise EncoderforgeError(f"{what} have shape {x.shape}, the index holds {dim}-d vectors; embed with the index's model")
    if not np.isfinite(x).all():
        raise EncoderforgeError(f"{what} contain NaN or inf; check the model that made them")
    _faiss().normalize_L2(x)
    return x


def _ivfpq(dim: int, train: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
    """A trained IVF-PQ index: ~4 sqrt(N) inverted lists (faiss' guideline, >= 39 training points each), D/8
    sub-quantizers of 8 bits (8 dims per byte: 384-d vectors in 48 bytes instead of 1,536); fewer bits when the
    training sample is too small for 256 centroids per sub-quantizer (faiss wants >= 39 points per centroid)."""
    faiss = _faiss()
    if train is None or len(train) < 256:
        n = 0 if train is None else len(train)
        raise EncoderforgeError(
            f"ivfpq needs at least 256 vectors to train its codebooks, got {n}; use --kind flat for small corpora"
        )
    nlist = max(1, min(int(4 * math.sqrt(len(train))), len(train) // 39))
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    nbits = max(1, min(8, int(math.log2(len(train) / 39))))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.nprobe = min(nlist, IVF_NPROBE)
    return index, {"nlist": nlist, "pq_m": m, "pq_bits": nbits, "nprobe": index.nprobe}
