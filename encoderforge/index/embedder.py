"""Texts -> index vectors with a model, and the EmbedSpec that records how (so queries can be checked against it).

A model is either a fine-tuned embedding run (RUN/model + RUN/task.json with kind "embed": pooling, max_length,
normalize and Matryoshka `dims` come from task.json) or a plain encoder (zoo name or checkpoint directory: those
settings come from the caller's flags).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence, cast

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.fileio import file_digest
from encoderforge.index.manifest import EmbedSpec
from encoderforge.index.rotation import load_rotation
from encoderforge.inference.engine import DEFAULT_MAX_TOKENS, EncodedTexts, Engine
from encoderforge.inference.precision import Precision
from encoderforge.model import checkpoint
from encoderforge.model.surgery import remove_layers
from encoderforge.model.zoo import ZOO, resolve_model
from encoderforge.tasks.embed_model import shape_vectors
from encoderforge.tokenization import load_tokenizer

DEFAULT_MAX_LENGTH = 256
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Embedder:
    """A loaded model and the spec of the vectors it makes.

    Example:
        >>> e = load_embedder("minilm-l6")
        >>> e.embed(["a query"]).shape   # (1, 384), unit length
    """

    engine: Engine
    spec: EmbedSpec
    rotation: np.ndarray | None = None  # (hidden, hidden) orthogonal, applied before the cut (index/rotation.py)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), spec.dim) float32 vectors in input order."""
        return self.embed_encoded(self.engine.tokenize(texts))

    def embed_encoded(self, encoded: EncodedTexts) -> np.ndarray:
        """Like `embed`, for texts already passed through `engine.tokenize`."""
        s = self.spec
        vecs = self.engine.embed_encoded(encoded, pooling=cast(Literal["mean", "cls"], s.pooling), normalize=s.normalize)
        return shape_vectors(vecs, rotation=self.rotation, dims=s.dims, normalize=s.normalize)


def load_embedder(
    model: str | Path,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    max_length: int | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    dims: int | None = None,
    layers: int | None = None,
    precision: Precision = "fp32",
) -> Embedder:
    """Load an embedding run or a plain encoder.

    Args:
        model: an `embed` run directory, a checkpoint directory or a zoo name ('minilm-l6').
        pooling, normalize, max_length: for a plain encoder (an embed run's task.json overrides them); max_length
            defaults to 256, or the model's max_position if smaller.
        max_tokens: token budget per forward pass.
        dims: keep only the first `dims` coordinates (Matryoshka), then re-normalise; overrides an embed run's own.
        layers: run only the first `layers` encoder layers (2D Matryoshka: a faster, shallower embedder).
        precision: the engine's GEMM precision: fp32, bf16 (CPUs with AVX512-BF16 or AMX, fidelity-gated) or auto.
    Returns:
        the Embedder.
    """
    if pooling not in ("mean", "cls"):
        raise EncoderforgeError(f"--pooling must be mean or cls, got {pooling!r}")
    path = resolve_model(model)
    asked = dims
    task = path / "task.json"
    meta = embed_run_meta(path) or {}
    run_dir: Path | None = path if meta else None  # an embed run's directory (its task.json may name a rotation)
    if meta:
        pooling, normalize = meta.get("pooling", "mean"), bool(meta.get("normalize", True))
        max_length, dims = meta.get("max_length"), meta.get("dims")
        path = path / "model"
    dims = asked or dims
    if not path.is_dir():
        raise EncoderforgeError(f"{path}: no such model directory; pass a zoo name ('minilm-l6'), a checkpoint or an embed run")
    weights = weights_file(path)
    if weights is None:
        raise EncoderforgeError(f"{path}: no {WEIGHTS[0]}; pass a checkpoint directory")
    loaded = checkpoint.load(path)
    if layers is not None:
        if not 0 < layers <= loaded.encoder.cfg.num_layers:
            raise EncoderforgeError(f"--layers={layers} must be in 1..{loaded.encoder.cfg.num_layers} (the model's layers)")
        remove_layers(loaded.encoder, range(layers))
    length = int(max_length or min(DEFAULT_MAX_LENGTH, loaded.encoder.cfg.max_position))
    engine = Engine(
        loaded.encoder, load_tokenizer(path), max_tokens=max(max_tokens, length), max_length=length, precision=precision
    )
    hidden = engine.encoder.cfg.hidden_size
    if dims is not None and not 0 < int(dims) <= hidden:
        raise EncoderforgeError(
            f"{task if not asked else '--dims'}: dims={dims} must be in 1..{hidden} (the model's hidden size)"
        )
    rotation, rotated = run_rotation(run_dir, meta, hidden) if run_dir else (None, "")
    model_hash = weights_digest(str(weights)) + (f":layers={layers}" if layers else "") + rotated  # another model
    spec = EmbedSpec(
        model=str(model) if str(model) in ZOO else str(Path(model).resolve()),  # found again from any directory
        model_hash=model_hash,
        dim=int(dims or hidden),
        pooling=pooling,
        normalize=normalize,
        max_length=length,
        dims=int(dims) if dims else None,
    )
    return Embedder(engine=engine, spec=spec, rotation=rotation)


def embed_run_meta(path: Path) -> dict | None:
    """An `embed` run's task.json (pooling, max_length, normalize, dims, rotation), or None for a checkpoint directory
    or zoo model; another run kind is an error (its model/ is the encoder, not an embedding model)."""
    task = path / "task.json"
    if not task.is_file():
        return None
    try:
        meta = json.loads(task.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderforgeError(f"{task}: not valid JSON ({e}); the run is damaged: train it again") from None
    if not isinstance(meta, dict):
        raise EncoderforgeError(f"{task}: expected a JSON object of the run's settings; the run is damaged: train it again")
    if meta.get("kind") != "embed":
        raise EncoderforgeError(
            f"{task}: a {meta.get('kind')!r} run, not an embedding model; pass an `embed` run, a plain encoder, or "
            f"{path / 'model'} for its fine-tuned encoder's own vectors"
        )
    return meta


def checkpoint_of(path: Path) -> Path:
    """The checkpoint directory of a model path: a run's model/ (a directory with task.json), else the path itself."""
    return path / "model" if (path / "task.json").is_file() else path


def weights_file(path: Path) -> Path | None:
    """The checkpoint's weights file (safetensors first), None when the directory has none."""
    return next((path / w for w in WEIGHTS if (path / w).is_file()), None)


def run_settings(meta: dict) -> dict[str, Any]:
    """An embed run's vector settings as `embed`'s flags name them (pooling, normalize, max_length)."""
    return {
        "pooling": meta.get("pooling", "mean"),
        "normalize": bool(meta.get("normalize", True)),
        "max_length": meta.get("max_length"),
    }


def run_vectors_note(checkpoint_dir: Path, used: dict[str, Any]) -> str:
    """A note when a checkpoint is the model/ of an `embed` run whose vectors differ from what `used` (pooling,
    normalize, max_length) makes of the encoder alone: rotated, cut, or pooled, normalised or cut at another length
    ("" otherwise; advisory, so a damaged run beside the checkpoint is no error here)."""
    path = Path(os.path.abspath(checkpoint_dir))  # the directory named, not a symlink's target
    try:
        meta = embed_run_meta(path.parent) if path.name == "model" else None
    except EncoderforgeError:
        return ""  # another kind of run, or a damaged one: nothing to say about its vectors
    if not meta:
        return ""
    differ = ["rotated"] if meta.get("rotation") else []
    differ += [f"cut to {meta['dims']} dims"] if meta.get("dims") else []
    differ += [f"{k} {v}" for k, v in run_settings(meta).items() if v is not None and used.get(k) != v]
    if not differ:
        return ""
    return (
        f"{checkpoint_dir} is the encoder of the embed run {path.parent}, whose vectors differ from these "
        f"({', '.join(differ)}); for the run's vectors, pass --model {path.parent}"
    )


def run_rotation(run_dir: Path, meta: dict, hidden: int) -> tuple[np.ndarray | None, str]:
    """An embed run's rotation (task.json "rotation", from `index rotate`) and what it adds to the model hash: a
    rotated model makes other truncated vectors, so its index must refuse the unrotated model's queries."""
    if not meta.get("rotation"):
        return None, ""
    f = run_dir / meta["rotation"]
    return load_rotation(f, hidden), f":rotation={(file_digest(f) or '')[:16]}"


def check_compatible(index_spec: EmbedSpec, query_spec: EmbedSpec, where: str) -> None:
    """One line naming both models and what differs, when a query's vectors cannot be compared with the index's."""
    diff = index_spec.mismatch(query_spec)
    if diff:
        raise EncoderforgeError(
            f"{where}: built with {index_spec.model} ({index_spec.pooling}, dim {index_spec.dim}) but the query uses "
            f"{query_spec.model} ({query_spec.pooling}, dim {query_spec.dim}); differs in {', '.join(diff)} — search "
            "with the index's model and settings (omit --model/--pooling), or rebuild with `encoderforge index build`"
        )


@lru_cache(maxsize=16)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path) or ""


def weights_digest(path: str) -> str:
    """sha256 of the weights, cached per (path, size, mtime): loading the same model twice hashes it once."""
    st = Path(path).stat()
    return _digest_cached(path, st.st_size, st.st_mtime_ns)
