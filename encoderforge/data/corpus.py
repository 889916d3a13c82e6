"""Corpus preparation: raw text -> cleaned, exact-deduplicated documents -> tokenized shards + manifest.

On disk (one directory):
    manifest.json                      written LAST: an interrupted run never looks complete
    <corpus>-<split>-00000.bin         token ids, uint16 if vocab < 65536 else uint32, documents back to back
    <corpus>-<split>-00000.idx.npy     (num_docs + 1,) int64 document start offsets into the .bin

Documents are stored without [CLS]/[SEP]; packing (data/packing.py) adds them per chunk.
Several corpora can be prepared together, each with a mixing weight (domain up-sampling, "Pre-training
technique to localize medical BERT"): the weight is how many times a corpus is seen per epoch of the mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Literal

import numpy as np
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.data.shards import MANIFEST, tokenizer_hash
from encoderforge.fileio import atomic_dir, check_output
from encoderforge.tokenization import load_tokenizer

Split = Literal["file", "paragraph", "line"]
_TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".license", ".rule", ".jsonl", ".json", ""}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a corpus name is part of shard file names: it must stay one plain file name


@dataclass
class CorpusSpec:
    """One input corpus.

    Args:
        path: a text file, a JSONL file (one {"text": ...} object per line) or a directory of them.
        name: short name used in shard file names; defaults to the path's stem.
        weight: times this corpus is seen per epoch of the mix (2.0 = up-sample twice, 0.5 = half).
        split: how a text file splits into documents: the whole "file", blank-line "paragraph"s or "line"s.
        field: the JSON field holding the text in JSONL files.
    """

    path: str
    name: str = ""
    weight: float = 1.0
    split: Split = "file"
    field: str = "text"

    def __post_init__(self) -> None:
        if not self.name:  # from the path: "notes v2.jsonl" -> "notes_v2"; ".." or "." -> "corpus"
            stem = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.]+", "_", Path(self.path).stem))
            self.name = stem.strip(".") or "corpus"
        check_corpus_name(self.name)
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise EncoderforgeError(f"corpus {self.path}: weight must be > 0 and finite, got {self.weight}")
        if self.split not in ("file", "paragraph", "line"):
            raise EncoderforgeError(f"corpus {self.path}: split={self.split!r}; use 'file', 'paragraph' or 'line'")


def check_corpus_name(name: str) -> str:
    """A corpus name names shard files inside --out; `../x` or `a/b` would write (or read) elsewhere."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise EncoderforgeError(
            f"corpus name {name!r} is not allowed: use letters, digits, '-', '_' and '.' only "
            "(no '/', no '..'), e.g. PATH=legal:2"
        )
    return name


@dataclass
class CorpusStats:
    name: str
    weight: float
    files: int = 0
    documents_read: int = 0
    duplicates: int = 0
    empty: int = 0
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    shards: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "eval": []})


# ---- reading and cleaning ------------------------------------------------------------------------


def list_files(path: Path) -> list[Path]:
    """Text files under `path` (sorted, hidden files skipped); a file is returned as is."""
    if not path.exists():
        raise EncoderforgeError(f"{path}: no such file or directory; pass a text/JSONL file or a directory of them")
    if path.is_file():
        return [path]
    out = [
        p
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts) and p.suffix.lower() in _TEXT_SUFFIXES
    ]
    if not out:
        raise EncoderforgeError(f"{path}: directory holds no text files (*.txt, *.jsonl, *.md, ...)")
    return out


def read_documents(spec: CorpusSpec, file: Path) -> Iterator[str]:
    """Yield the raw documents of one file (streamed line by line for JSONL)."""
    with open(file, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise EncoderforgeError(f"{file}: looks like a binary file (NUL bytes); pass text or JSONL files only")
    try:
        if file.suffix.lower() == ".jsonl":
            with open(file, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield _json_text(line, file, lineno, spec.field)
            return
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EncoderforgeError(
            f"{file}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8 or remove it from the corpus"
        ) from None
    if spec.split == "file":
        yield text
    elif spec.split == "paragraph":
        yield from re.split(r"\n\s*\n", text)
    else:
        yield from text.splitlines()


def _json_text(line: str, file: Path, lineno: int, key: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise EncoderforgeError(f"{file}:{lineno}: invalid JSON ({e.msg}); each line must be one JSON object") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
        raise EncoderforgeError(
            f'{file}:{lineno}: no string field {key!r}; each line needs {{"{key}": "..."}} (choose the field with --field)'
        )
    return obj[key]


def clean(text: str) -> str:
    """NFC-normalize, drop YAML front matter and control characters, trim lines, collapse blank runs."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    if text.startswith("---\n"):  # YAML front matter (e.g. licensedcode .LICENSE files) is metadata, not prose
        end = text.find("\n---", 4)
        if end != -1:
            text = text[end + 4 :]
    text = _CONTROL.sub("", text)
    lines = [ln.rstrip() for ln in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def doc_hash(text: str) -> bytes:
    """Exact-duplicate key: hash of the case- and whitespace-normalized text."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


class _ShardWriter:
    """Append documents to .bin shards of at most `shard_tokens` tokens; keeps one shard's offsets in memory."""

    def __init__(self, out: Path, prefix: str, dtype: type, shard_tokens: int):
        self.out, self.prefix, self.dtype, self.shard_tokens = out, prefix, dtype, shard_tokens
        self.names: list[str] = []
        self._f: BinaryIO | None = None
        self._offsets: list[int] = []

    def add(self, ids: list[int]) -> None:
        if self._f is None or (self._offsets[-1] + len(ids) > self.shard_tokens and len(self._offsets) > 1):
            self._close()
            name = f"{self.prefix}-{len(self.names):05d}"
            self.names.append(name)
            self._f = open(self.out / f"{name}.bin", "wb")
            self._offsets = [0]
        self._f.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(ids))

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            np.save(self.out / f"{self.names[-1]}.idx.npy", np.asarray(self._offsets, dtype=np.int64))
            self._f = None

    def close(self) -> list[str]:
        self._close()
        return self.names


def prepare_corpus(
    corpora: list[CorpusSpec],
    tokenizer: str | Path,
    out: str | Path,
    *,
    eval_fraction: float = 0.01,
    shard_tokens: int = 1 << 26,
    min_chars: int = 20,
    batch_docs: int = 512,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Clean, deduplicate and tokenize corpora into token shards with a manifest.

    Args:
        corpora: the input corpora (paths + mixing weights).
        tokenizer: tokenizer.json, vocab.txt or a checkpoint directory holding one.
        out: output directory; it appears only when complete (written atomically, manifest last).
        eval_fraction: share of documents held out for evaluation, chosen by document hash (stable).
        shard_tokens: maximum tokens per shard file.
        min_chars: documents shorter than this after cleaning are dropped.
        batch_docs: documents tokenized per call (bounds memory).
        seed: salts the held-out split.
        overwrite: replace an existing output directory (only one made with the same tokenizer).
    Returns:
        the manifest dict.
    """
    out = Path(out)
    if not corpora:
        raise EncoderforgeError("no corpus given; pass at least one text/JSONL file or directory")
    # before any work: shards inside a corpus directory would be read back as text by the next run
    check_output(out, [*(c.path for c in corpora), tokenizer], flag="--out", expect="dir")
    if not 0 <= eval_fraction < 1:
        raise EncoderforgeError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    names = [c.name for c in corpora]
    if len(set(names)) != len(names):
        raise EncoderforgeError(f"corpus names must be unique, got {names}; name them with path=name:weight")
    tok = load_tokenizer(tokenizer)
    thash = tokenizer_hash(tok)
    if (out / MANIFEST).exists():
        try:
            old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            raise EncoderforgeError(f"{out / MANIFEST}: not a readable shard manifest; choose a new output directory")
        if old.get("tokenizer_hash") != thash:
            raise EncoderforgeError(
                f"{out}: holds shards made with another tokenizer ({old.get('tokenizer_hash')} != "
                f"{thash}); choose a new output directory"
            )
        if not overwrite:
            raise EncoderforgeError(f"{out}: already prepared; pass --overwrite to rebuild it")
    elif out.exists() and any(out.iterdir()):
        raise EncoderforgeError(f"{out}: exists, is not empty and has no {MANIFEST}; choose an empty output directory")
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab < 65536 else np.uint32
    cut = int(eval_fraction * 2**32)
    salt = seed.to_bytes(8, "little")
    seen: set[bytes] = set()  # 16 bytes per unique document: dedupe is exact across all corpora
    stats = []
    with atomic_dir(out, overwrite=True) as tmp:
        for spec in corpora:
            st = CorpusStats(name=spec.name, weight=spec.weight)
            writers = {s: _ShardWriter(tmp, f"{spec.name}-{s}", dtype, shard_tokens) for s in ("train", "eval")}
            pending: dict[str, list[str]] = {"train": [], "eval": []}
            files = list_files(Path(spec.path))
            st.files = len(files)
            for file in files:
                for raw in read_documents(spec, file):
                    st.documents_read += 1
                    text = clean(raw)
                    if len(text) < min_chars:
                        st.empty += 1
                        continue
                    h = doc_hash(text)
                    if h in seen:
                        st.duplicates += 1
                        continue
                    seen.add(h)
                    key = int.from_bytes(hashlib.blake2b(h + salt, digest_size=4).digest(), "little")
                    split = "eval" if key < cut else "train"
                    pending[split].append(text)
                    if len(pending[split]) >= batch_docs:
                        _flush(tok, pending[split], writers[split], st, split)
            for split in ("train", "eval"):
                _flush(tok, pending[split], writers[split], st, split)
                st.shards[split] = writers[split].close()
            if st.documents["train"] == 0:
                raise EncoderforgeError(
                    f"corpus {spec.path}: no documents left after cleaning and deduplication "
                    f"({st.documents_read} read, {st.duplicates} duplicates, {st.empty} shorter than "
                    f"{min_chars} chars); check the path or lower --min-chars"
                )
            stats.append(st)
        manifest = {
            "format": "encoderforge-shards",
            "version": 1,
            "tokenizer_hash": thash,
            "vocab_size": vocab,
            "dtype": np.dtype(dtype).name,
            "eval_fraction": eval_fraction,
            "seed": seed,
            "corpora": [asdict(s) | {"path": str(c.path), "split": c.split} for s, c in zip(stats, corpora)],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last file: marks the directory complete
    return manifest


def _flush(tok: Tokenizer, texts: list[str], writer: _ShardWriter, st: CorpusStats, split: str) -> None:
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        if enc.ids:
            writer.add(enc.ids)
            st.documents[split] += 1
            st.tokens[split] += len(enc.ids)
    texts.clear()


def parse_corpus_arg(arg: str, *, split: Split = "file", field: str = "text") -> CorpusSpec:
    """CLI form `PATH[=NAME][:WEIGHT]`, e.g. `legal/=legal:3` (weight after the last colon if it is a number)."""
    weight = 1.0
    head, _, tail = arg.rpartition(":")
    if head and re.fullmatch(r"[0-9]*\.?[0-9]+", tail):
        arg, weight = head, float(tail)
    path, _, name = arg.partition("=")
    return CorpusSpec(path=path, name=name, weight=weight, split=split, field=field)


# ---- reading shards back -------------------------------------------------------------------------
