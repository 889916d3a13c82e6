"""What a server serves: a checkpoint or zoo model (embeddings), a fine-tuned run (embeddings + its task head), or a
pipeline run directory (its RUN/finetune). Weights come from the checkpoint's safetensors file (checkpoint.load
reads a PyTorch .bin only with weights_only=True when there is none); no path ever comes from a request."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.index.embedder import WEIGHTS, run_rotation, weights_digest, weights_file
from encoderforge.index.manifest import EmbedSpec
from encoderforge.inference.engine import EncodedTexts, Engine
from encoderforge.inference.precision import Precision
from encoderforge.model.zoo import ZOO, resolve_model
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.embed_model import shape_vectors
from encoderforge.tasks.registry import TASKS


@dataclass
class Served:
    """The loaded model: its engine (embeddings) and, for a fine-tuned run, the predictor (head) and task kind.

    `pooling`, `normalize` and `dims` say how vectors are made: mean / L2 / full width for a plain encoder, an
    `embed` run's own task.json settings for an embedding run (so that /v1/embeddings equals `load_embedder(RUN)`
    and queries land in the same space as an index built with the run). `ref` and `weights` name the model the way
    index manifests do, for `embed_spec`."""

    name: str
    engine: Engine
    predictor: Predictor | None = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    dims: int | None = None
    ref: str = ""
    weights: Path | None = None
    rotation: np.ndarray | None = None  # an `index rotate` run's, applied before the cut
    rotated: str = ""  # what the rotation adds to the model hash

    @property
    def kind(self) -> str | None:
        return self.predictor.meta["kind"] if self.predictor else None

    @property
    def pairs(self) -> bool:
        """Whether the head reads text pairs (a cross-encoder: /v1/rerank)."""
        return bool(self.predictor) and int(self.predictor.meta.get("text_fields", 1)) == 2  # type: ignore[union-attr]

    @property
    def dim(self) -> int:
        """The width of the vectors served (an embed run's Matryoshka `dims`, else the hidden size)."""
        return int(self.dims or self.engine.encoder.cfg.hidden_size)

    @property
    def vocab(self) -> int:
        return int(self.engine.tokenizer.get_vocab_size())

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Token id lists (already truncated, with [CLS]/[SEP]) -> pooled float32 rows, made exactly as
        index/embedder.py's `Embedder.embed` makes them (pooling, normalisation, rotation, Matryoshka cut)."""
        enc = EncodedTexts(ids=[list(x) for x in ids], truncated=[])
        vecs = self.engine.embed_encoded(enc, pooling=self.pooling, normalize=self.normalize)
        return shape_vectors(vecs, rotation=self.rotation, dims=self.dims, normalize=self.normalize)

    def embed_spec(self) -> EmbedSpec:
        """How this server's vectors are made, in an index manifest's terms (hashes the weights: call it once, at
        startup, and only when an index has to be checked)."""
        if self.weights is None:
            raise EncoderforgeError(f"{self.ref or self.name}: no weights file ({WEIGHTS[0]}) to check an index against")
        return EmbedSpec(
            model=self.ref,
            model_hash=weights_digest(str(self.weights)) + self.rotated,  # the same cached sha256 the index recorded
            dim=self.dim,
            pooling=self.pooling,
            normalize=self.normalize,
            max_length=int(self.engine.max_length),
            dims=self.dims,
        )

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        assert self.predictor is not None
        return self.predictor.predict(list(texts))


def load_served(path: str | Path, *, max_tokens: int = 16384, precision: Precision = "fp32") -> Served:
    """A run directory (task.json; or a pipeline run's finetune/) or a checkpoint / zoo name.

    Example:
        >>> load_served("runs/legal-quickstart").kind
        'multilabel'
    """
    p = Path(path)
    if (p / "pipeline.json").is_file():
        if not (p / "finetune" / "task.json").is_file():
            raise EncoderforgeError(f"{p}: a pipeline run without a finished finetune stage; run it first or serve a model")
        p = p / "finetune"
    if (p / "task.json").is_file():
        meta = json.loads((p / "task.json").read_text(encoding="utf-8"))
        if meta.get("kind") not in TASKS:
            raise EncoderforgeError(f"{p / 'task.json'}: unknown task kind {meta.get('kind')!r}")
        pred = Predictor.load(p, max_tokens=max_tokens, precision=precision)
        # embeddings get their own Engine over the same weights: its own tokenizer object, because the head's
        # prediction code changes its tokenizer's truncation on the model thread while requests tokenize elsewhere
        embed = copy.copy(pred.engine)  # the same encoder module (forwards all run on the one model thread)
        embed.tokenizer = Tokenizer.from_str(pred.engine.tokenizer.to_str())  # with the engine's truncation settings
        name = p.resolve().parent.name if p.name == "finetune" else p.name
        served = Served(name=name, engine=embed, predictor=pred, ref=str(p.resolve()), weights=weights_file(p / "model"))
        if meta["kind"] == "embed":  # an embedding run embeds its own way (task.json), not with mean pooling
            served.pooling = "cls" if meta.get("pooling") == "cls" else "mean"
            served.normalize = bool(meta.get("normalize", True))
            served.dims = int(meta["dims"]) if meta.get("dims") else None
            served.rotation, served.rotated = run_rotation(p, meta, embed.encoder.cfg.hidden_size)
        return served
    resolved = resolve_model(str(path))
    if not Path(resolved).is_dir():
        raise EncoderforgeError(f"{path}: not a model directory, run directory or zoo name; pass one of those")
    return Served(
        name=Path(resolved).name,
        engine=Engine.from_pretrained(resolved, max_tokens=max_tokens, precision=precision),
        ref=str(path) if str(path) in ZOO else str(Path(path).resolve()),  # as `index build` records it
        weights=weights_file(Path(resolved)),
    )
