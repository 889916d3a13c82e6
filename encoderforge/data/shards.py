"""Reading prepared shards: the manifest (checked against the tokenizer, shard names contained in the directory)
and the documents as memory-mapped token arrays. corpus.py writes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError

MANIFEST = "manifest.json"


def tokenizer_hash(tok: Tokenizer) -> str:
    """Identity of a tokenizer: shards made with one tokenizer are meaningless to another."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]


# ---- shard writing -------------------------------------------------------------------------------


def read_manifest(path: str | Path, *, tokenizer: Tokenizer | None = None) -> dict:
    """Read a prepared shard directory's manifest, checking it is complete and (optionally) matches `tokenizer`."""
    path = Path(path)
    file = path / MANIFEST
    if not file.exists():
        raise EncoderforgeError(
            f"{path}: no {MANIFEST}; it is not a prepared corpus (or preparation was interrupted): "
            "run `encoderforge data prepare` first"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        missing = [k for k in ("tokenizer_hash", "dtype", "corpora") if k not in manifest]
        if missing:
            raise KeyError(missing[0])
        for c in manifest["corpora"]:
            for split in ("train", "eval"):
                for name in c["shards"][split]:
                    _check_shard_name(path, file, str(name))
    except (ValueError, UnicodeDecodeError) as e:
        raise EncoderforgeError(f"{file}: not valid JSON ({e}); re-run `encoderforge data prepare`") from None
    except (KeyError, TypeError) as e:
        raise EncoderforgeError(
            f"{file}: not an encoderforge shard manifest (missing or malformed {e}); re-run `encoderforge data prepare`"
        ) from None
    if tokenizer is not None and manifest["tokenizer_hash"] != tokenizer_hash(tokenizer):
        raise EncoderforgeError(
            f"{path}: shards were made with another tokenizer (hash {manifest['tokenizer_hash']}); "
            "re-run `encoderforge data prepare` with the model's tokenizer"
        )
    return manifest


def _check_shard_name(path: Path, file: Path, name: str) -> None:
    """A manifest lists bare shard names; one that resolves outside the shard directory is refused, never read."""
    inside = path.resolve()
    target = (path / f"{name}.bin").resolve()
    if Path(name).is_absolute() or "/" in name or "\\" in name or inside not in target.parents:
        raise EncoderforgeError(
            f"{file}: shard {name!r} is not a file name inside {path}; a manifest lists bare shard "
            "names — re-run `encoderforge data prepare` instead of editing it"
        )


@dataclass
class Documents:
    """The documents of one corpus split, memory-mapped: `tokens(i)` reads document i from disk."""

    name: str
    weight: float
    lengths: np.ndarray  # (D,) int64 tokens per document
    _shard: np.ndarray  # (D,) int32 which shard holds each document
    _start: np.ndarray  # (D,) int64 offset inside that shard
    _bins: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, i: int, start: int = 0, end: int | None = None) -> np.ndarray:
        s = int(self._start[i])
        end = int(self.lengths[i]) if end is None else end
        return self._bins[int(self._shard[i])][s + start : s + end]


def load_documents(
    path: str | Path, split: Literal["train", "eval"] = "train", *, tokenizer: Tokenizer | None = None
) -> list[Documents]:
    """Memory-map every corpus of a prepared directory for one split (corpora with no documents are skipped)."""
    path = Path(path)
    manifest = read_manifest(path, tokenizer=tokenizer)
    out = []
    for c in manifest["corpora"]:
        bins: list[np.ndarray] = []  # memmaps
        shard, start, lengths = [], [], []
        for k, name in enumerate(c["shards"][split]):
            offsets = np.load(path / f"{name}.idx.npy")
            bins.append(np.memmap(path / f"{name}.bin", dtype=manifest["dtype"], mode="r"))
            shard.append(np.full(len(offsets) - 1, k, dtype=np.int32))
            start.append(offsets[:-1])
            lengths.append(np.diff(offsets))
        if bins:
            out.append(
                Documents(c["name"], c["weight"], np.concatenate(lengths), np.concatenate(shard), np.concatenate(start), bins)
            )
    if not out:
        raise EncoderforgeError(f"{path}: no {split!r} documents; for evaluation prepare with --eval-fraction > 0")
    return out
