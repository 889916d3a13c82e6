"""Reading texts (one per line) and writing vectors (.npy or JSONL), atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file


def read_lines(path: str | Path) -> list[str]:
    """One text per line from a UTF-8 file, or stdin for '-'. Non-UTF-8 input names the line."""
    if str(path) == "-":
        raw, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        p = Path(path)
        if not p.is_file():
            raise EncoderforgeError(f"{p}: no such file; pass a UTF-8 text file with one text per line, or '-' for stdin")
        raw, name = p.read_bytes(), str(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EncoderforgeError(
            f"{name}: line {line}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return text.splitlines()


def write_vectors(path: str | Path, vectors: np.ndarray, texts: list[str]) -> Path:
    """Write (n, C) vectors as .npy, or as JSONL {"text", "vector"} for any other suffix."""
    path = Path(path)
    if path.suffix == ".npy":
        with atomic_file(path, "wb") as f:
            np.save(f, vectors.astype(np.float32))
    else:
        with atomic_file(path, "w", encoding="utf-8") as f:
            for t, v in zip(texts, vectors):
                f.write(json.dumps({"text": t, "vector": [round(float(x), 7) for x in v]}, ensure_ascii=False) + "\n")
    return path
