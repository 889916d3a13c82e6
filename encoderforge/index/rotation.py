"""An orthogonal rotation of embedding space fitted on a corpus, so that a vector's first k coordinates keep as much of
the corpus's vectors as any k directions can (PCA without centering: the eigenvectors of X^T X / n, largest first).

Why: a Matryoshka model is trained so that its first coordinates carry the most, but what it learns is only a
tendency; rotating the space to the corpus's principal directions before the cut keeps more of what separates
*these* documents (docs/results.md, issue 17, nineteenth session: wordnet at 96 of 384 dims 93.9% -> 97.3% of the
full width's nDCG@10). The rotation is orthogonal and not centred, so dot products and cosines at full width are
unchanged: only truncated vectors differ. Fitted with numpy (eigh of a d x d matrix); faiss's PCAMatrix would centre
the vectors (changing full-width scores), so it is not used here.

    RUN/rotation.safetensors   {"rotation": (d, d) float32, columns = directions, largest energy first}
    RUN/task.json              "rotation": "rotation.safetensors" (and "dims": the default cut)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoderforge import EncoderforgeError

ROTATION_FILE = "rotation.safetensors"


def fit_rotation(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotation (d, d) float32 orthogonal, energy share of each direction (d,), largest first) for (n, d) vectors."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise EncoderforgeError(f"a rotation needs at least 2 vectors, got shape {x.shape}")
    w, v = np.linalg.eigh(x.T @ x / len(x))
    order = np.argsort(-w)
    w = np.clip(w[order], 0.0, None)
    return np.ascontiguousarray(v[:, order], dtype=np.float32), w / max(float(w.sum()), 1e-30)


def save_rotation(path: Path, rotation: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file({"rotation": np.ascontiguousarray(rotation, dtype=np.float32)}, str(path))


def load_rotation(path: Path, dim: int) -> np.ndarray:
    """The (dim, dim) rotation saved at `path`, checked to be square, of the model's width, and orthogonal."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise EncoderforgeError(f"{path}: missing; rerun `encoderforge index rotate` to write it")
    try:
        r = load_file(str(path))["rotation"]
    except (SafetensorError, KeyError, OSError, ValueError) as e:
        raise EncoderforgeError(f"{path}: not a rotation file ({e}); rerun `encoderforge index rotate`") from None
    if r.shape != (dim, dim) or not np.allclose(r.T @ r, np.eye(dim), atol=1e-4):
        raise EncoderforgeError(
            f"{path}: not an orthogonal {dim} x {dim} rotation (shape {r.shape}); rerun `encoderforge index rotate`"
        )
    return np.ascontiguousarray(r, dtype=np.float32)
