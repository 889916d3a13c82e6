"""BM25 over a corpus with bm25s (Lù 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse
scoring"): its regex tokenizer (lower-cased words of 2+ characters), English stopwords, and PyStemmer's English
stemmer only when PyStemmer is installed (recorded in the manifest, so queries are always tokenized like the corpus).

    DIR/bm25/         bm25s' own files (BM25.save: sparse score matrix, params) + the tokenizer vocabulary
    DIR/ids.jsonl     one {"id", "meta"} per document, in bm25s' row order
    DIR/manifest.json kind "bm25", count, sha256 of every file above
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoderforge import EncoderforgeError, require
from encoderforge.fileio import atomic_dir
from encoderforge.index.dense import IDS_FILE, Hits
from encoderforge.index.manifest import MANIFEST, Manifest, read_manifest, write_manifest

SUBDIR = "bm25"


def _stemmer(name: str | None) -> Any:
    """PyStemmer's stemmer, or None when not asked / not installed (bm25s then matches exact word forms)."""
    if name is None:
        return None
    try:
        import Stemmer  # type: ignore[import-not-found]
    except ImportError:
        raise EncoderforgeError(
            f"this BM25 index was built with the {name} stemmer from PyStemmer; pip install PyStemmer or rebuild the index"
        ) from None
    return Stemmer.Stemmer(name)


def _default_stemmer() -> str | None:
    try:
        import Stemmer  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return None
    return "english"


class BM25Index:
    """Lexical retrieval with the same `search(texts, k) -> Hits` as a dense retriever.

    Example:
        >>> bm = BM25Index.build(["d1", "d2"], ["the cat sat", "a dog barked"])
        >>> bm.search(["cat"], k=1).ids   # [['d1']]
    """

    def __init__(self, retriever: Any, tokenizer: Any, ids: list[str], meta: list[dict], stemmer: str | None):
        self.retriever, self.tokenizer, self.ids, self.meta, self.stemmer = retriever, tokenizer, ids, meta, stemmer
        self.kind = "bm25"

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict] | None = None) -> "BM25Index":
        """Index documents (ids unique, texts non-empty: see index/readers.py).

        Args:
            ids: document ids.
            texts: their texts.
            metadata: optional per-document dicts kept with the ids.
        Returns:
            the BM25Index.
        """
        bm25s = require("bm25s", "index")
        if len(set(ids)) != len(ids):
            dup = next(i for n, i in enumerate(ids) if i in ids[:n])
            raise EncoderforgeError(f"duplicate document id {dup!r}; make ids unique")
        stemmer = _default_stemmer()
        tok = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=_stemmer(stemmer))
        tokens = tok.tokenize(list(texts), return_as="tuple", show_progress=False)  # with its vocab: saves as JSON
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, tok, list(ids), [dict(m) for m in metadata] if metadata else [{} for _ in ids], stemmer)

    def search(self, texts: Sequence[str], k: int = 10) -> Hits:
        """The k best-scoring documents per query text; documents sharing no term with the query are left out."""
        if k < 1:
            raise EncoderforgeError(f"-k must be >= 1, got {k}")
        q = self.tokenizer.tokenize(list(texts), update_vocab=False, return_as="tuple", show_progress=False)
        docs, scores = self.retriever.retrieve(q, k=min(k, len(self.ids)), show_progress=False)  # (Q, k) each
        out = Hits([], [])
        for drow, srow in zip(np.asarray(docs).tolist(), np.asarray(scores).tolist()):
            keep = [(self.ids[d], float(s)) for d, s in zip(drow, srow) if s > 0]
            out.ids.append([i for i, _ in keep])
            out.scores.append([s for _, s in keep])
        return out

    def save(self, directory: str | Path) -> Path:
        """Write DIR atomically, every file hashed into the manifest."""
        with atomic_dir(directory) as tmp:
            self.retriever.save(str(tmp / SUBDIR), show_progress=False)
            self.tokenizer.save_vocab(str(tmp / SUBDIR))
            with open(tmp / IDS_FILE, "w", encoding="utf-8") as f:
                for i, m in zip(self.ids, self.meta):
                    f.write(json.dumps({"id": i, "meta": m}, ensure_ascii=False) + "\n")
            files = sorted(str(p.relative_to(tmp)) for p in (tmp / SUBDIR).iterdir()) + [IDS_FILE]
            write_manifest(tmp, Manifest(kind="bm25", count=len(self.ids), params={"stemmer": self.stemmer}), files)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "BM25Index":
        """Read an index written by `save` after checking every file against the manifest."""
        bm25s = require("bm25s", "index")
        d = Path(directory)
        m = read_manifest(d)
        if m.kind != "bm25":
            raise EncoderforgeError(f"{d / MANIFEST}: a {m.kind!r} index, not bm25")
        stemmer = m.params.get("stemmer")
        tok = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=_stemmer(stemmer))
        tok.load_vocab(str(d / SUBDIR))
        retriever = bm25s.BM25.load(str(d / SUBDIR), show_progress=False)
        rows = [json.loads(line) for line in (d / IDS_FILE).read_text(encoding="utf-8").splitlines()]
        return cls(retriever, tok, [r["id"] for r in rows], [r["meta"] for r in rows], stemmer)
