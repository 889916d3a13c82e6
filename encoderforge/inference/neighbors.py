"""Exact nearest neighbours among embedded texts (small sets; the faiss index is for large ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.inference.textio import read_lines


@dataclass
class Neighbor:
    text: str
    neighbor: str
    cosine: float


def nearest_neighbors(texts: str | Path, vectors: str | Path) -> list[Neighbor]:
    """For each line of `texts`, the other line whose vector (from `encoderforge embed`, .npy) is closest."""
    lines = read_lines(texts)
    try:
        vecs = np.load(vectors)
    except (OSError, ValueError) as e:
        raise EncoderforgeError(f"{vectors}: not a .npy matrix written by `encoderforge embed` ({e})") from None
    if vecs.shape[0] != len(lines) or len(lines) < 2:
        raise EncoderforgeError(
            f"{vectors}: has {vecs.shape[0]} vectors but {texts} has {len(lines)} lines; "
            "embed the same file again (and use at least 2 lines)"
        )
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)
    sim = unit @ unit.T  # (n, n) cosine
    np.fill_diagonal(sim, -np.inf)
    best = sim.argmax(axis=1)
    return [Neighbor(lines[i], lines[j], float(sim[i, j])) for i, j in enumerate(best)]
