"""/v1/search: `encoderforge serve MODEL --index DIR` answers queries against an index loaded at startup.

A dense index must have been built with the served model, embedding the way the server embeds (weights hash,
pooling, normalisation, Matryoshka dims): otherwise its vectors and the queries' live in different spaces and
every answer would be quietly wrong, so the server refuses to start. Queries go through the same dynamic batcher as
/v1/embeddings (batched with concurrent requests) and are cut at the index's max_length, like its documents were;
the index lookup runs off the event loop. A BM25 index needs no model: queries go straight to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from encoderforge import EncoderforgeError
from encoderforge.index.bm25 import BM25Index
from encoderforge.index.dense import DenseIndex, Hits
from encoderforge.index.manifest import Manifest, read_manifest
from encoderforge.serving import metrics
from encoderforge.serving.guard import ERRORS, ApiError
from encoderforge.serving.model import Served
from encoderforge.serving.schemas import SearchRequest, SearchResponse


@dataclass
class SearchIndex:
    """A loaded index (dense or BM25) and what /v1/search needs to answer from it."""

    directory: Path
    kind: str  # flat | hnsw | ivfpq | bm25
    dense: DenseIndex | None = None
    lexical: BM25Index | None = None
    max_length: int = 0  # dense: the index's documents were cut at this many tokens; queries are cut the same way
    meta: dict[str, dict] = field(default_factory=dict)
    # bm25s documents no thread safety for concurrent retrieve calls, and DenseIndex.search sets an HNSW index's
    # efSearch (from k) on the shared index just before searching: serialise those searches (they are short)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def count(self) -> int:
        return len(self.dense) if self.dense is not None else len(self.lexical or [])

    def search_vectors(self, vectors: np.ndarray, k: int) -> Hits:
        assert self.dense is not None
        if self.kind != "hnsw":
            return self.dense.search(vectors, k)  # flat and IVF-PQ searches only read the index: run them side by side
        with self.lock:
            return self.dense.search(vectors, k)

    def search_texts(self, texts: list[str], k: int) -> Hits:
        assert self.lexical is not None
        with self.lock:
            return self.lexical.search(texts, k)


def check_index(directory: str | Path, served: Served, *, verify: bool = True) -> Manifest:
    """Refuse (one line: the index, both models, the fix) an index whose vectors the served model cannot match.

    Args:
        directory: the index directory (--index).
        served: the loaded model.
        verify: also check every index file against the manifest's sha256 (a corrupt index fails here, once).
    Returns:
        the index's Manifest.
    """
    d = Path(directory)
    m = read_manifest(d, verify=verify)
    if m.kind == "bm25":
        return m  # lexical: no vectors to compare
    fix = f"rebuild it with `encoderforge index build CORPUS {d} --model {served.ref or served.name}`"
    if m.embed is None:
        raise EncoderforgeError(f"--index {d}: its manifest records no model, so queries cannot be checked against it; {fix}")
    ours = served.embed_spec()
    diff = m.embed.mismatch(ours)
    if m.embed.max_length > ours.max_length:  # a query could not be embedded as long as the documents were
        diff.append(f"max_length {m.embed.max_length} vs {ours.max_length}")
    if diff:
        raise EncoderforgeError(
            f"--index {d}: built with {m.embed.model} ({m.embed.pooling}, dim {m.embed.dim}) but the server embeds "
            f"queries with {ours.model} ({ours.pooling}, dim {ours.dim}); differs in {', '.join(diff)} — {fix}, "
            f"or serve {m.embed.model}"
        )
    return m


def load_search_index(directory: str | Path, served: Served) -> SearchIndex:
    """Check the index against the served model, then load it (read-only; each worker process loads its own)."""
    d = Path(directory)
    m = check_index(d, served, verify=False)  # the loads below verify every file's sha256
    if m.kind == "bm25":
        lexical = BM25Index.load(d)
        return SearchIndex(d, "bm25", lexical=lexical, meta=dict(zip(lexical.ids, lexical.meta)))
    dense = DenseIndex.load(d)
    assert m.embed is not None  # check_index refused a dense index without a spec
    return SearchIndex(d, dense.kind, dense=dense, max_length=m.embed.max_length, meta=dense.meta)


Embed = Callable[[Request, list[list[int]], int], Awaitable[list[Any]]]
TextsOf = Callable[..., list[str]]


def register_search(app: FastAPI, served: Served, index: SearchIndex, *, texts_of: TextsOf, embed: Embed) -> None:
    """Add POST /v1/search to `app`.

    Args:
        texts_of: the app's input check (list, item count and character limits) -> the query texts.
        embed: queue token id lists on the app's embedding batcher -> their vectors (handles timeouts, 429s and
            clients that go away, like /v1/embeddings).
    """

    def query_ids(texts: list[str], truncate: bool) -> list[list[int]]:
        """Token ids cut at the index's max_length, the way the Rust tokenizer cuts (keeping [CLS] and [SEP]): the
        server's own max_length may be longer (a plain encoder serves up to max_position), checked at startup."""
        enc = served.engine.tokenize(texts)
        cut = set(enc.truncated)
        out = []
        for i, ids in enumerate(enc.ids):
            if len(ids) > index.max_length or i in cut:
                if not truncate:
                    raise ApiError(400, f"query[{i}] is longer than the index's {index.max_length} tokens; shorten it "
                                   "or send truncate=true", param="query")  # fmt: skip
                ids = ids[: index.max_length - 1] + ids[-1:]
            out.append(ids)
        return out

    def hits_json(hits: Hits, documents: bool) -> list[list[dict[str, Any]]]:
        results = []
        for ids, scores in zip(hits.ids, hits.scores):
            row = []
            for rank, (doc, score) in enumerate(zip(ids, scores), 1):
                hit: dict[str, Any] = {"id": doc, "score": float(score), "rank": rank}
                if documents:
                    meta = dict(index.meta.get(doc, {}))
                    text = meta.pop("text", None)  # `index build` stores the text in the metadata (store_text)
                    hit["metadata"] = meta
                    if isinstance(text, str):
                        hit["text"] = text
                row.append(hit)
            results.append(row)
        return results

    @app.post("/v1/search", response_model=None, responses={200: {"model": SearchResponse}, **ERRORS})
    async def search(req: SearchRequest, request: Request) -> Response:
        """The k nearest documents of each query in the served index, best first (cosine similarity for a dense
        index, BM25 score for a lexical one)."""
        texts = texts_of(req.query, req.truncate, param="query")
        if any(not t.strip() for t in texts):
            raise ApiError(400, "a query is blank; send text with at least one word", param="query")
        if index.dense is not None:
            small = len(texts) <= 8 and sum(map(len, texts)) < 4096
            ids = query_ids(texts, req.truncate) if small else await asyncio.to_thread(query_ids, texts, req.truncate)
            tokens = sum(map(len, ids))
            vecs = np.asarray(await embed(request, ids, tokens), dtype=np.float32)
            metrics.tokens(tokens)
            t0 = time.perf_counter()
            hits = await asyncio.to_thread(index.search_vectors, vecs, req.k)  # faiss releases the GIL
        else:
            t0 = time.perf_counter()
            hits = await asyncio.to_thread(index.search_texts, texts, req.k)
        metrics.searched(time.perf_counter() - t0)
        body = {
            "object": "list",
            "model": served.name,
            "index": {"kind": index.kind, "count": index.count},
            "results": hits_json(hits, req.return_documents),
        }
        return Response(orjson.dumps(body), media_type="application/json")
