"""The `index` stage's config section (its own module: pipeline/config.py is near the size limit, and the stage's
code in index_stage.py imports config.py, so the dataclass cannot live there without an import cycle).

    index: {corpus: licensedcode-texts, max_docs: 400, max_length: 128}             # queries: the data stage's test split
    index: {corpus: docs.jsonl, queries: q.jsonl, qrels: qrels.tsv, bm25: true}    # your own search task
    index: {dims: 96}      # also search the fine-tuned model's first 96 coordinates, rotated to the corpus
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from encoderforge import EncoderforgeError

LICENSE_CORPUS = "licensedcode-texts"


@dataclass
class IndexStage:
    """Search the domain's documents with the model the pipeline trained, beside BM25 and the untrained base model.

    Args:
        corpus: licensedcode-texts (every licensedcode-data license text, front matter removed, exact duplicates
            dropped, id = license key) or a JSONL file of {"id", "text"} documents.
        max_docs: documents indexed, 0 = all; a cap keeps every document some query is judged relevant to, then a
            seeded sample of the rest (a cap that dropped the answers would measure nothing).
        max_length: tokens per text (documents and queries) for the dense models; BM25 reads whole texts.
        queries: JSONL {"id", "text"} queries; default: the data stage's test split, each snippet's labels (license
            keys) being its relevant documents.
        qrels: TSV query_id<TAB>doc_id<TAB>relevance judging `queries` (required with it).
        bm25: evaluate BM25 over the same corpus.
        base: evaluate the start model (the finetune section's `model`, exact search) over the same corpus.
        kind: the faiss index of the fine-tuned model: auto (flat up to 100k documents) | flat | hnsw | ivfpq.
        pooling: pooling of a plain encoder (a fine-tuned `embed` run decides for itself).
        k: documents retrieved per query (recall@100 needs 100).
        threads: torch intra-op threads while embedding and searching (0 = torch's default); latency is measured one
            query at a time, where one thread is often as fast and a busy machine makes more threads spin.
        seed: the sample a `max_docs` cap keeps.
        dims: also rotate the fine-tuned model to the corpus (`encoderforge index rotate`, orthogonal: full-width
            scores unchanged) and search its first `dims` coordinates, exactly: what a smaller index keeps (0 = off).
    """

    corpus: str = LICENSE_CORPUS
    max_docs: int = 0
    max_length: int = 128
    queries: str | None = None
    qrels: str | None = None
    bm25: bool = True
    base: bool = True
    kind: Literal["auto", "flat", "hnsw", "ivfpq"] = "auto"
    pooling: Literal["mean", "cls"] = "mean"
    k: int = 100
    threads: int = 0
    seed: int = 0
    dims: int = 0

    def __post_init__(self) -> None:
        if self.dims < 0:
            raise EncoderforgeError(f"index.dims must be >= 0 (0 = off), got {self.dims}; e.g. 96 for a quarter of 384")
        if self.max_docs < 0:
            raise EncoderforgeError(f"index.max_docs must be >= 0 (0 = all), got {self.max_docs}")
        if self.max_length < 8:
            raise EncoderforgeError(f"index.max_length must be >= 8 tokens, got {self.max_length}")
        if self.k < 1:
            raise EncoderforgeError(f"index.k must be >= 1, got {self.k}")
        if self.threads < 0:
            raise EncoderforgeError(f"index.threads must be >= 0 (0 = torch's default), got {self.threads}")
        if self.corpus != LICENSE_CORPUS and not Path(self.corpus).is_file():
            raise EncoderforgeError(
                f'index.corpus={self.corpus!r}: no such file; name a JSONL of {{"id", "text"}} documents or use {LICENSE_CORPUS}'
            )
        if self.qrels is not None and self.queries is None:
            raise EncoderforgeError(
                f"index.qrels={self.qrels!r} is set without index.queries; add the queries JSONL it judges or remove qrels"
            )
        if self.queries is not None and self.qrels is None:
            raise EncoderforgeError(
                f"index.queries={self.queries!r} is set without index.qrels; add the qrels TSV "
                "(query_id<TAB>doc_id<TAB>relevance) or remove queries"
            )
        for name in ("queries", "qrels"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise EncoderforgeError(f"index.{name}={path!r}: no such file; fix the path")


def check_index(cfg: IndexStage, *, data_on: bool, finetune_on: bool, where: str) -> None:
    """The stage's needs from other stages: the fine-tuned model, and queries (its own files or the data stage's)."""
    if not finetune_on:
        raise EncoderforgeError(
            f"{where}: index needs the finetune stage's model but finetune is off; add a finetune: section or remove index"
        )
    if cfg.queries is None and not data_on:
        raise EncoderforgeError(
            f"{where}: index needs queries: set index.queries and index.qrels, or turn on the data stage (its test split)"
        )


def check_index_dims(cfg: IndexStage, model: str, where: str) -> None:
    """index.dims must fit the start model's width (fine-tuning keeps it): said now, not after fine-tuning."""
    if not cfg.dims:
        return
    from encoderforge.index.embedder import checkpoint_of  # torch and faiss only when dims is set
    from encoderforge.model.checkpoint import read_encoder_config
    from encoderforge.model.zoo import resolve_model

    try:
        hidden = read_encoder_config(checkpoint_of(resolve_model(model))).hidden_size
    except EncoderforgeError:
        return  # the finetune stage names a missing or broken start model in its own words
    if cfg.dims > hidden:
        raise EncoderforgeError(
            f"{where}: index.dims={cfg.dims} is wider than the model ({model}: {hidden} dims); "
            f"use at most {hidden}, e.g. {hidden // 4} for a quarter"
        )
