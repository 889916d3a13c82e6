"""The manifest of a saved index: what built it and the sha256 of every file, checked on load so that a missing,
truncated or swapped file is a one-line error instead of wrong search results.

    DIR/manifest.json  {"format_version", "kind", "count", "embed": EmbedSpec | null, "files": {name: sha256}, "params"}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from encoderforge import EncoderforgeError
from encoderforge.fileio import file_digest

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild with `encoderforge index build`"


@dataclass(frozen=True)
class EmbedSpec:
    """How vectors were made: a query must be embedded the same way to be comparable with the index."""

    model: str  # zoo name, checkpoint dir or embed run dir, as given
    model_hash: str  # sha256 of the weights file (model.safetensors)
    dim: int  # vector size in the index (after any Matryoshka truncation)
    pooling: str  # "mean" | "cls"
    normalize: bool
    max_length: int
    dims: int | None = None  # Matryoshka: vectors cut to their first `dims` values, then re-normalised

    def mismatch(self, other: "EmbedSpec") -> list[str]:
        """`field: ours vs theirs` for each field that changes the vectors (max_length only cuts long texts)."""
        keys = ("model_hash", "dim", "pooling", "normalize", "dims")
        return [
            f"{k} {_short(getattr(self, k))} vs {_short(getattr(other, k))}"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]


def _short(value: object) -> str:
    """A field for a message: a model hash as its first 12 hex digits plus what follows the weights' digest
    (":rotation=...", ":layers=..."), so two hashes of the same weights read differently; anything else as is."""
    text = str(value)
    digest, sep, rest = text.partition(":")
    return f"{digest[:12]}{sep}{rest}" if len(digest) == 64 else text[:12]


@dataclass
class Manifest:
    kind: str  # flat | hnsw | ivfpq | bm25
    count: int
    embed: EmbedSpec | None = None
    files: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def write_manifest(directory: Path, m: Manifest, files: list[str]) -> None:
    """Hash `files` (relative to `directory`) into the manifest and write it last: a directory without a manifest is
    never taken for an index."""
    m.files = {name: file_digest(directory / name) or "" for name in files}
    (directory / MANIFEST).write_text(json.dumps(asdict(m), indent=2), encoding="utf-8")


def read_manifest(directory: str | Path, *, verify: bool = True) -> Manifest:
    """Read DIR/manifest.json and (by default) check every file it lists against its sha256.

    Args:
        directory: an index directory.
        verify: hash the listed files (skip only for a quick look at the metadata).
    Returns:
        the Manifest.
    """
    d = Path(directory)
    if not d.is_dir():
        hint = _interrupted_save(d)
        raise EncoderforgeError(f"{d}: no such index directory; {hint or 'check the path or ' + REBUILD}")
    path = d / MANIFEST
    if not path.is_file():
        raise EncoderforgeError(f"{path}: missing, so {d} is not a complete index; {REBUILD}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        spec = raw.get("embed")
        m = Manifest(**{**raw, "embed": EmbedSpec(**spec) if spec else None})
    except (ValueError, TypeError) as e:
        raise EncoderforgeError(f"{path}: unreadable manifest ({str(e)[:80]}); {REBUILD}") from None
    if m.format_version != FORMAT_VERSION:
        raise EncoderforgeError(f"{path}: index format {m.format_version}, this encoderforge reads {FORMAT_VERSION}; {REBUILD}")
    if verify:
        for name, digest in m.files.items():
            f = d / name
            if not f.is_file():
                raise EncoderforgeError(f"{f}: missing from the index; {REBUILD}")
            if file_digest(f) != digest:
                raise EncoderforgeError(f"{f}: checksum differs from {MANIFEST} (corrupt or replaced); {REBUILD}")
    return m


def _interrupted_save(d: Path) -> str:
    """fileio.atomic_dir moves the old directory aside for an instant before renaming the new one in: a save killed
    exactly then leaves the previous index as `.NAME.old-PID`. Say where it is rather than lose it silently."""
    olds = sorted(d.parent.glob(f".{d.name}.old-*")) if d.parent.is_dir() else []
    return f"a save was interrupted; the previous index is at {olds[0]}: rename it to {d}" if olds else ""
