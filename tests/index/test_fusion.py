"""Re-ranker / first-stage score fusion: z-scores per query, the two ends of the weight, and its range."""

from __future__ import annotations

import numpy as np
import pytest

from encoderforge import EncoderforgeError
from encoderforge.index.fusion import fuse


def test_fusion_mixes_standardised_scores():
    first, rerank = [30.0, 20.0, 10.0, 0.0], [0.1, 0.9, 0.3, 0.2]
    z = lambda x: (np.array(x) - np.mean(x)) / np.std(x)  # noqa: E731
    assert fuse(first, rerank, 0.25) == pytest.approx(0.25 * z(rerank) + 0.75 * z(first))
    assert list(np.argsort(-fuse(first, rerank, 0))) == [0, 1, 2, 3]  # the first stage's order
    assert list(fuse(first, rerank, 1)) == rerank  # the re-ranker's own scores
    assert list(fuse([1.0, 1.0], [2.0, 3.0], 0.5)) == pytest.approx([-0.5, 0.5])  # a constant side adds nothing
    for w in (-0.1, 1.01):
        with pytest.raises(EncoderforgeError, match=r"^--rerank-weight must be in \[0, 1\]"):
            fuse(first, rerank, w)
