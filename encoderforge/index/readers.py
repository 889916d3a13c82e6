"""Readers of the retrieval data formats, validating every line before any compute (errors name FILE:LINE and the fix).

- corpus: JSONL, one `{"id": str, "text": str, ...}` per line; every other key is the document's metadata;
- queries: JSONL `{"id": str, "text": str}`;
- qrels: TSV `query_id<TAB>doc_id<TAB>relevance` (integer >= 0, no header), trec-style graded relevance.
Blank lines are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from encoderforge import EncoderforgeError
from encoderforge.data.textfile import json_object


@dataclass
class Doc:
    """One corpus line: its id, text and metadata (every other key of the line)."""

    id: str
    text: str
    meta: dict = field(default_factory=dict)
    line: int = 0


def iter_docs(path: str | Path, *, what: str = "corpus") -> Iterator[Doc]:
    """Stream the documents of a JSONL file, checking each line; duplicate ids are caught by `read_docs`/`check_docs`.

    Args:
        path: the JSONL file.
        what: "corpus" or "queries", for the messages.
    Returns:
        an iterator of Doc in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderforgeError(f'{path}: no such file; pass the {what} JSONL (one {{"id", "text"}} object per line)')
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _doc(path, n, line, what)
        except UnicodeDecodeError as e:
            raise EncoderforgeError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8") from None


def _doc(path: Path, n: int, line: str, what: str) -> Doc:
    where = f"{path}:{n}"
    obj = json_object(line, where, 'write one JSON object {"id": ..., "text": ...} per line')
    doc_id, text = obj.pop("id", None), obj.pop("text", None)
    if not isinstance(doc_id, str) or not doc_id.strip():
        got = "missing" if doc_id is None else f"{doc_id!r} ({type(doc_id).__name__})"
        raise EncoderforgeError(f'{where}: "id" is {got}; give every {what} line a non-empty string id')
    if not isinstance(text, str) or not text.strip():
        got = "missing" if text is None else "empty" if isinstance(text, str) else f"a {type(text).__name__}"
        raise EncoderforgeError(f'{where}: "text" of {doc_id!r} is {got}; give it a non-empty string or drop the line')
    return Doc(id=doc_id, text=text, meta=obj, line=n)


def check_docs(path: str | Path, *, what: str = "corpus") -> int:
    """Validate a whole file (JSON, id, text, unique ids) without keeping the texts; returns the document count."""
    first: dict[str, int] = {}
    for d in iter_docs(path, what=what):
        if d.id in first:
            raise EncoderforgeError(f"{path}:{d.line}: duplicate id {d.id!r} (first on line {first[d.id]}); make ids unique")
        first[d.id] = d.line
    if not first:
        raise EncoderforgeError(f'{path}: no {what} lines; write one {{"id", "text"}} object per line')
    return len(first)


def read_docs(path: str | Path, *, what: str = "corpus") -> list[Doc]:
    """Every document of a (validated) JSONL file, in file order."""
    check_docs(path, what=what)
    return list(iter_docs(path, what=what))


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """{query id: {doc id: relevance}} from a trec-style TSV; a repeated (query, doc) pair is an error."""
    path = Path(path)
    if not path.is_file():
        raise EncoderforgeError(f"{path}: no such file; pass the qrels TSV (query_id<TAB>doc_id<TAB>relevance)")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3 or not parts[0].strip() or not parts[1].strip():
                raise EncoderforgeError(
                    f"{path}:{n}: expected 3 tab-separated fields query_id, doc_id, relevance; got {len(parts)}"
                    " (no header line; separate fields with one TAB)"
                )
            q, d, rel = parts
            try:
                r = int(rel)
            except ValueError:
                r = -1
            if r < 0:
                raise EncoderforgeError(f"{path}:{n}: relevance {rel!r} is not an integer >= 0; use 0 (not relevant), 1, 2, ...")
            if d in out.setdefault(q, {}):
                raise EncoderforgeError(f"{path}:{n}: query {q!r} judges doc {d!r} twice; keep one line per pair")
            out[q][d] = r
    if not out:
        raise EncoderforgeError(f"{path}: no judgements; write query_id<TAB>doc_id<TAB>relevance lines")
    return out
