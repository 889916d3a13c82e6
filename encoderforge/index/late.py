"""A compressed token index for ColBERT late interaction (tasks/colbert.py): every document is its matrix of unit token
vectors, stored as a k-means centroid + a scalar-quantised residual (the ColBERTv2 idea, Santhanam et al. 2022,
"ColBERTv2: Effective and Efficient Retrieval via Lightweight Late Interaction"), and searched in two stages:

1. candidate generation (PLAID's centroid -> passages lists, Santhanam et al. 2022b): each query token's `nprobe`
   nearest centroids; every document with a token in one of those cells is a candidate. Cells of frequent tokens
   ([CLS], [SEP], "the") hold nearly every document, so when there are more than `ndocs` candidates they are cut to
   the `ndocs` best by PLAID's centroid interaction: MaxSim with each document token replaced by its centroid;
2. exact MaxSim (Khattab & Zaharia 2020, Eq. 3) of the query against each candidate's decompressed token vectors,
   with the one `maxsim` kernel training uses; the top k come back.

Compression: a faiss IndexIVFScalarQuantizer trained on the token vectors is the codec (`train_codec`; `index
build` trains it on a seeded sample: every token of a corpus of up to 2^18, else max(2^18, 39 per default
centroid) — the sample grows with sqrt(corpus), ~5M tokens (2.6 GB at 128-d) for 100M — and encodes shard by shard,
index/late_model.py): its
coarse quantizer (an IndexFlatL2 of `nlist` k-means centroids) is the IVF, and its by-residual scalar quantizer stores each token's
residual from its centroid in 8 (or 4) bits per dimension with per-dimension ranges learnt on the residuals. Why
this and not ColBERTv2's 1-2 bit bucketed residuals: faiss encodes and decodes it in vectorised C++ (`sa_encode` /
`sa_decode`) with no packing code of ours, and 8 bits keep the decompressed MaxSim within ~1e-3 of the float one so
the rerank is effectively exact; 4 bits halve the codes for a small loss (module test, docs in the report). A 128-d
token costs 2 + 128 bytes (8-bit) or 2 + 64 (4-bit) instead of 512 as float32.

    DIR/ivf.faiss     the trained, empty IVF-SQ index (centroids + quantiser ranges: the codec)
    DIR/codes.npy     (N, code_size) uint8: each token's faiss code (centroid number + residual code), in document order
    DIR/offsets.npy   (n + 1,) int64: document i's tokens are codes[offsets[i]:offsets[i + 1]]
    DIR/ids.jsonl     one {"id", "meta"} per document, in order
    DIR/manifest.json kind "colbert", count, params (dim, nlist, bits, nprobe, tokens, train_tokens when built by `index
                      build`), sha256 of the files above
Shapes: n documents, N tokens in all, D the token vector size, Lq query tokens, C candidate documents, K results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from encoderforge import EncoderforgeError, require
from encoderforge.fileio import atomic_dir
from encoderforge.index.dense import Hits
from encoderforge.index.manifest import MANIFEST, REBUILD, EmbedSpec, Manifest, read_manifest, write_manifest
from encoderforge.model.padding import layout_from_lengths, pad_packed
from encoderforge.tasks.colbert import maxsim

KIND = "colbert"
FAISS_FILE, CODES_FILE, OFFSETS_FILE, IDS_FILE = "ivf.faiss", "codes.npy", "offsets.npy", "ids.jsonl"
NPROBE = 4  # cells per query token (PLAID's default ncells is 1-4); recall@10 vs exhaustive in tests/index/test_late.py
NDOCS = 256  # candidates kept for the exact rerank (PLAID's ndocs for k=10)
RERANK_DOCS = 1024  # candidates decompressed and scored per block (bounds the padded (C, T, D) tensor)
LATE_REBUILD = "rebuild it with `encoderforge index build CORPUS DIR --model COLBERT_RUN` (or `LateIndex.build(ids, token_matrices).save(DIR)`)"


def _faiss() -> Any:
    return require("faiss", "index")


def train_codec(x: np.ndarray, *, bits: int, nlist: int, seed: int = 0) -> Any:
    """The codec of (N, D) unit token vectors: an IVF-SQ index whose k-means centroids (`nlist`) and residual ranges
    are learnt from `x` (faiss samples 256 points per centroid at most); `sa_encode` then compresses any token."""
    faiss = _faiss()
    if bits not in (4, 8):
        raise EncoderforgeError(f"late index: bits must be 4 or 8, got {bits!r}")
    if not 1 <= nlist <= len(x):
        raise EncoderforgeError(f"late index: nlist={nlist} must be in 1..{len(x)} (the number of training tokens)")
    dim = int(x.shape[1])
    qtype = faiss.ScalarQuantizer.QT_8bit if bits == 8 else faiss.ScalarQuantizer.QT_4bit
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(dim), dim, nlist, qtype, faiss.METRIC_L2, True)
    ivf.cp.seed = seed
    ivf.train(x)
    return ivf


def default_nlist(tokens: int) -> int:
    """ColBERTv2's number of centroids, 2^floor(log2(16 sqrt(N))), capped so each gets faiss' 39 training points."""
    return max(1, min(2 ** int(math.log2(16 * math.sqrt(max(tokens, 1)))), tokens // 39))


class LateIndex:
    """Compressed per-token document vectors with centroid-based candidate generation and an exact MaxSim rerank.

    Example:
        >>> idx = LateIndex.build(["a", "b"], [tokens_a, tokens_b])      # (L_a, 128), (L_b, 128) unit vectors
        >>> idx.search([query_tokens], k=10).ids[0]                      # ['b', 'a']
        >>> idx.save("late-ix"); LateIndex.load("late-ix").size_mb
    """

    def __init__(
        self,
        ivf: Any,
        codes: np.ndarray,
        offsets: np.ndarray,
        ids: list[str],
        meta: list[dict],
        params: dict,
        spec: EmbedSpec | None = None,
    ):
        self.ivf, self.codes, self.offsets, self.ids, self.meta_rows = ivf, codes, offsets, ids, meta
        self.spec = spec  # the ColBERT model that made the vectors (index/late_model.py), checked against queries
        self.params = {"nprobe": NPROBE, **params}
        self.meta = dict(zip(ids, meta))  # the Retriever protocol's doc id -> metadata
        self.row = {doc: i for i, doc in enumerate(ids)}
        self.cell, self._lists = self._cell_documents()

    @property
    def dim(self) -> int:
        return int(self.ivf.d)

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size_mb(self) -> float:
        """What the index holds in memory and on disk (codes, offsets, centroids, quantiser ranges) in MiB."""
        codec = self.nlist * self.dim * 4 + 2 * self.dim * 4
        return (self.codes.nbytes + self.offsets.nbytes + codec) / 2**20

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        docs: Sequence[np.ndarray],
        metadata: Sequence[dict] | None = None,
        *,
        bits: Literal[4, 8] = 8,
        nlist: int | None = None,
        seed: int = 0,
        spec: EmbedSpec | None = None,
    ) -> "LateIndex":
        """Train the centroids and quantiser on every token vector, then encode all documents.

        Args:
            ids: n unique document ids; docs: n (L_i, D) token matrices (ColBERT vectors; rows are L2-normalised
                here, so MaxSim is over cosines), L_i >= 1; metadata: one dict per document.
            bits: residual bits per dimension (8 or 4); nlist: centroids (default `default_nlist`); seed: k-means;
            spec: the model that made the vectors (recorded in the manifest).
        Returns:
            the LateIndex.
        """
        if len(ids) != len(docs) or (metadata is not None and len(metadata) != len(ids)):
            raise EncoderforgeError(
                f"LateIndex.build: {len(ids)} ids, {len(docs)} token matrices, {len(metadata or ids)} metadata rows; "
                "pass one of each per document"
            )
        if not ids:
            raise EncoderforgeError("LateIndex.build: no documents; pass at least one token matrix")
        if len(set(ids)) != len(ids):
            dup = next(i for n, i in enumerate(ids) if i in ids[:n])
            raise EncoderforgeError(f"LateIndex.build: id {dup!r} occurs twice; give every document its own id")
        if bits not in (4, 8):
            raise EncoderforgeError(f"LateIndex.build: bits must be 4 or 8, got {bits!r}")
        dim = int(np.shape(docs[0])[-1]) if np.ndim(docs[0]) == 2 else 0
        if dim < 1:
            raise EncoderforgeError(f"LateIndex.build: document {ids[0]!r} is not an (L, D) token matrix: {np.shape(docs[0])}")
        mats = [unit_tokens(d, dim, f"document {ids[i]!r}") for i, d in enumerate(docs)]
        x = np.concatenate(mats)  # (N, D)
        ivf = train_codec(x, bits=bits, nlist=nlist or default_nlist(len(x)), seed=seed)
        lengths = np.array([len(m) for m in mats], dtype=np.int64)
        return cls.from_codes(ivf, ivf.sa_encode(x), lengths, ids, metadata, bits=bits, spec=spec)

    @classmethod
    def from_codes(
        cls,
        ivf: Any,
        codes: np.ndarray,
        lengths: np.ndarray,
        ids: Sequence[str],
        metadata: Sequence[dict] | None = None,
        *,
        bits: int,
        spec: EmbedSpec | None = None,
        extra: dict | None = None,
    ) -> "LateIndex":
        """An index from a trained codec (`train_codec`) and every token's code, documents back to back with
        `lengths` (n,) tokens each; `extra` goes into the saved params."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        meta = [dict(m) for m in metadata] if metadata is not None else [{} for _ in ids]
        params = {"dim": int(ivf.d), "nlist": int(ivf.nlist), "bits": bits, **(extra or {})}
        return cls(ivf, codes, offsets, list(ids), meta, params, spec)

    def _cell_documents(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """(N,) each token's centroid number, and the IVF: (nlist + 1,) offsets into (M,) document numbers, each
        cell's documents sorted and unique."""
        size = int(self.ivf.coarse_code_size())  # faiss writes the centroid number little-endian in the first bytes
        cell = self.codes[:, :size].astype(np.int64) @ (256 ** np.arange(size, dtype=np.int64))  # (N,)
        doc = np.repeat(np.arange(len(self.ids)), np.diff(self.offsets))  # (N,)
        pairs = np.unique(cell * len(self.ids) + doc)  # sorted by (cell, doc), one entry per pair
        cells, docs = np.divmod(pairs, len(self.ids))
        return cell, (np.searchsorted(cells, np.arange(self.nlist + 1)), docs)

    def reconstruct(self, doc_id: str) -> np.ndarray:
        """The decompressed (L, D) token vectors of one document (what search scores)."""
        i = self.row.get(doc_id, -1)
        if i < 0:
            raise EncoderforgeError(f"id {doc_id!r} is not in the index (ids are case-sensitive); check the id")
        return self._decode(np.arange(self.offsets[i], self.offsets[i + 1]))

    def _decode(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.ivf.sa_decode(np.ascontiguousarray(self.codes[rows])), dtype=np.float32)

    def candidates(self, q: np.ndarray, nprobe: int) -> np.ndarray:
        """Stage 1: (C,) sorted document numbers with a token in one of each query token's nprobe nearest cells."""
        _, cells = self.ivf.quantizer.search(q, min(nprobe, self.nlist))  # (Lq, nprobe)
        starts, docs = self._lists
        cells = np.unique(cells[cells >= 0])
        return np.unique(np.concatenate([docs[starts[c] : starts[c + 1]] for c in cells]))

    def prune(self, q: np.ndarray, docs: np.ndarray, ndocs: int) -> np.ndarray:
        """Stage 1b: the `ndocs` best of `docs` (sorted) by centroid interaction (PLAID): MaxSim against each
        document token's centroid instead of its decompressed vector, so no residual is decoded."""
        if len(docs) <= ndocs:
            return docs
        cq = q @ self.ivf.quantizer.reconstruct_n(0, self.nlist).T  # (Lq, nlist)
        lo, hi = self.offsets[docs], self.offsets[docs + 1]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
        starts = np.concatenate([[0], np.cumsum(hi - lo)[:-1]])  # (C,) each document's first column
        approx = np.maximum.reduceat(cq[:, self.cell[rows]], starts, axis=1).sum(axis=0)  # (Lq, C) -> (C,)
        return np.sort(docs[np.argsort(-approx, kind="stable")[:ndocs]])

    def score(self, q: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """Stage 2: (C,) exact MaxSim of one query (Lq, D) against documents' decompressed tokens (tasks.colbert)."""
        out = np.zeros(len(docs), dtype=np.float32)
        qt = torch.from_numpy(q)[None]  # (1, Lq, D)
        q_mask = torch.ones(qt.shape[:2], dtype=torch.bool)
        for j in range(0, len(docs), RERANK_DOCS):
            part = docs[j : j + RERANK_DOCS]
            lo, hi = self.offsets[part], self.offsets[part + 1]
            rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
            grid = pad_packed(torch.from_numpy(self._decode(rows)), layout_from_lengths(torch.from_numpy(hi - lo)))
            out[j : j + len(part)] = maxsim(qt, q_mask, grid.hidden, grid.mask)[0].numpy()  # (c,)
        return out

    def search(self, queries: Sequence[np.ndarray], k: int = 10, *, nprobe: int | None = None, ndocs: int | None = None) -> Hits:
        """The k best documents of each query by MaxSim, best first.

        Args:
            queries: Q (Lq_i, D) query token matrices (from the index's ColBERT model).
            k: results per query; nprobe: cells per query token (default: the saved params' nprobe); `self.nlist`
                with ndocs >= len(self) makes every document a candidate: exhaustive MaxSim over the compressed
                vectors; ndocs: candidates reranked exactly (default max(NDOCS, k)).
        Returns:
            Hits (ids and MaxSim scores per query).
        """
        if k < 1:
            raise EncoderforgeError(f"-k must be >= 1, got {k}")
        probe = int(self.params["nprobe"] if nprobe is None else nprobe)
        if probe < 1:
            raise EncoderforgeError(f"nprobe must be >= 1, got {probe}")
        keep = max(NDOCS, k) if ndocs is None else ndocs
        if keep < k:
            raise EncoderforgeError(f"ndocs must be >= k ({k}), got {keep}")
        out = Hits([], [])
        for n, raw in enumerate(queries):
            q = unit_tokens(raw, self.dim, f"query {n}")
            cand = self.prune(q, self.candidates(q, probe), keep)
            scores = self.score(q, cand)
            top = np.argsort(-scores, kind="stable")[:k]
            out.ids.append([self.ids[int(cand[t])] for t in top])
            out.scores.append([float(scores[t]) for t in top])
        return out

    def save(self, directory: str | Path) -> Path:
        """Write DIR atomically (a temporary sibling renamed over DIR) with a checksummed manifest (index/manifest.py)."""
        with atomic_dir(directory) as tmp:
            _faiss().write_index(self.ivf, str(tmp / FAISS_FILE))
            np.save(tmp / CODES_FILE, self.codes, allow_pickle=False)
            np.save(tmp / OFFSETS_FILE, self.offsets, allow_pickle=False)
            with open(tmp / IDS_FILE, "w", encoding="utf-8") as f:
                for doc, meta in zip(self.ids, self.meta_rows):
                    f.write(json.dumps({"id": doc, "meta": meta}, ensure_ascii=False) + "\n")
            params = {**self.params, "tokens": int(len(self.codes))}
            write_manifest(
                tmp,
                Manifest(kind=KIND, count=len(self), embed=self.spec, params=params),
                [FAISS_FILE, CODES_FILE, OFFSETS_FILE, IDS_FILE],
            )
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "LateIndex":
        """Read an index written by `save`, after checking every file against the manifest's sha256."""
        d = Path(directory)
        try:
            m = read_manifest(d)
        except EncoderforgeError as e:  # name the ColBERT run the build needs
            raise EncoderforgeError(str(e).replace(REBUILD, LATE_REBUILD)) from None
        if m.kind != KIND:
            raise EncoderforgeError(f"{d / MANIFEST}: a {m.kind!r} index, not a colbert one; load it with `load_index`")
        rows = [json.loads(line) for line in (d / IDS_FILE).read_text(encoding="utf-8").splitlines()]
        ivf = _faiss().read_index(str(d / FAISS_FILE))
        codes = np.load(d / CODES_FILE, allow_pickle=False)
        offsets = np.load(d / OFFSETS_FILE, allow_pickle=False)
        params = {k: v for k, v in m.params.items() if k != "tokens"}
        return cls(ivf, codes, offsets, [r["id"] for r in rows], [r["meta"] for r in rows], params, m.embed)


def unit_tokens(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """(L, D) float32 C-contiguous unit rows; checks the shape (one line that names the fix) and finiteness."""
    a = np.array(x, dtype=np.float32, copy=True, order="C")
    if a.ndim != 2 or a.shape[1] != dim or not len(a):
        raise EncoderforgeError(
            f"{what}: token vectors of shape {a.shape}, the index holds {dim}-d token vectors (at least one per text); "
            "encode with the index's ColBERT model"
        )
    if not np.isfinite(a).all():
        raise EncoderforgeError(f"{what}: token vectors contain NaN or inf; check the model that made them")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
