"""What evaluation and the CLI search with: one `search(texts, k) -> Hits` over a dense index (+ its model), a ColBERT
late-interaction index (+ its ColBERT run) or BM25."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.index.bm25 import BM25Index
from encoderforge.index.dense import DenseIndex, Hits
from encoderforge.index.embedder import Embedder, check_compatible, load_embedder
from encoderforge.index.late import KIND as LATE_KIND
from encoderforge.index.late import LateIndex
from encoderforge.index.late_model import LateEmbedder, load_late_embedder
from encoderforge.index.manifest import MANIFEST, read_manifest
from encoderforge.index.readers import Doc
from encoderforge.model.zoo import ZOO


class Retriever(Protocol):
    """Anything that ranks documents for query texts; `meta` maps doc id -> its stored metadata."""

    meta: dict[str, dict]

    def search(self, texts: Sequence[str], k: int = 10) -> Hits: ...

    def describe(self) -> str: ...


class DenseRetriever:
    """A dense index and the model that embeds queries for it (checked against the index's manifest)."""

    def __init__(self, index: DenseIndex, embedder: Embedder, name: str):
        if index.spec is not None:
            check_compatible(index.spec, embedder.spec, name)
        self.index, self.embedder, self.name = index, embedder, name
        self.meta = index.meta

    def search(self, texts: Sequence[str], k: int = 10) -> Hits:
        return self.index.search(self.embedder.embed(texts), k)

    def describe(self) -> str:
        s = self.embedder.spec
        return f"dense {self.index.kind} {self.name} ({s.model}, {s.pooling}, dim {s.dim})"


class BM25Retriever:
    """BM25Index under the Retriever protocol."""

    def __init__(self, index: BM25Index, name: str):
        self.index, self.name = index, name
        self.meta = dict(zip(index.ids, index.meta))

    def search(self, texts: Sequence[str], k: int = 10) -> Hits:
        return self.index.search(texts, k)

    def describe(self) -> str:
        return f"bm25 {self.name} (bm25s, English stopwords, stemmer {self.index.stemmer})"


class LateRetriever:
    """A compressed ColBERT index (index/late.py) and the ColBERT run that encodes queries (checked against it)."""

    def __init__(self, index: LateIndex, embedder: LateEmbedder, name: str):
        if index.spec is not None:
            check_compatible(index.spec, embedder.spec, name)
        self.index, self.embedder, self.name = index, embedder, name
        self.meta = index.meta

    def search(self, texts: Sequence[str], k: int = 10) -> Hits:
        return self.index.search(self.embedder.encode(texts), k)

    def describe(self) -> str:
        p = self.index.params
        return (
            f"colbert late interaction {self.name} ({self.embedder.spec.model}, {p['dim']}-d tokens, {p['bits']}-bit residuals)"
        )


def open_index(directory: str | Path, *, model: str | None = None, pooling: str | None = None) -> Retriever:
    """Load a saved index (dense, colbert or bm25) as a Retriever; a dense one embeds queries with its manifest's model
    unless `model`/`pooling` say otherwise (then they must produce the same vectors, or it is an error)."""
    d = Path(directory)
    m = read_manifest(d, verify=False)  # the load below verifies every file
    if m.kind == "bm25":
        return BM25Retriever(BM25Index.load(d), str(d))
    if m.kind == LATE_KIND:
        late = LateIndex.load(d)
        run = model or (late.spec.model if late.spec else None)
        if run is None:
            raise EncoderforgeError(f"{d / MANIFEST}: records no ColBERT model; pass --model COLBERT_RUN")
        if model is None and not Path(run).is_dir():
            raise EncoderforgeError(f"{d}: was built with the ColBERT run {run}, which is not there any more; pass --model RUN")
        return LateRetriever(late, load_late_embedder(run), str(d))
    index = DenseIndex.load(d)
    spec = index.spec
    if spec is None and model is None:
        raise EncoderforgeError(f"{d / MANIFEST}: records no model; pass --model")
    name = model or (spec.model if spec else "")
    if model is None and name not in ZOO and not Path(name).is_dir():
        raise EncoderforgeError(
            f"{d}: was built with the model {name}, which is not there any more; pass --model PATH (the same model)"
        )
    emb = load_embedder(
        name,
        pooling=pooling or (spec.pooling if spec else "mean"),
        normalize=spec.normalize if spec else True,
        max_length=spec.max_length if spec else None,
    )
    return DenseRetriever(index, emb, str(d))


def exact_retriever(docs: Sequence[Doc], embedder: Embedder, *, batch: int = 10_000) -> DenseRetriever:
    """Embed every document and search them exactly (flat): the reference a model is evaluated with."""
    index = DenseIndex.create(embedder.spec.dim, "flat", spec=embedder.spec)
    for i in range(0, len(docs), batch):
        chunk = docs[i : i + batch]
        index.add([d.id for d in chunk], np.asarray(embedder.embed([d.text for d in chunk])), [{} for _ in chunk])
    return DenseRetriever(index, embedder, "exact (corpus embedded in memory)")
