"""What a server serves: a checkpoint or zoo model (embeddings), a fine-tuned run (embeddings + its task head), or a
pipeline run directory (its RUN/finetune). Weights come from the checkpoint's safetensors file (checkpoint.load
reads a PyTorch .bin only with weights_only=True when there is none); no path ever comes from a request."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.inference.engine import EncodedTexts, Engine
from encoderforge.model.zoo import resolve_model
from encoderforge.recipes.predict import Predictor
from encoderforge.tasks.registry import TASKS


@dataclass
class Served:
    """The loaded model: its engine (embeddings) and, for a fine-tuned run, the predictor (head) and task kind."""

    name: str
    engine: Engine
    predictor: Predictor | None = None

    @property
    def kind(self) -> str | None:
        return self.predictor.meta["kind"] if self.predictor else None

    @property
    def pairs(self) -> bool:
        """Whether the head reads text pairs (a cross-encoder: /v1/rerank)."""
        return bool(self.predictor) and int(self.predictor.meta.get("text_fields", 1)) == 2  # type: ignore[union-attr]

    @property
    def dim(self) -> int:
        return int(self.engine.encoder.cfg.hidden_size)

    @property
    def vocab(self) -> int:
        return int(self.engine.tokenizer.get_vocab_size())

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Token id lists (already truncated, with [CLS]/[SEP]) -> normalized mean-pooled float32 rows."""
        return self.engine.embed_encoded(EncodedTexts(ids=[list(x) for x in ids], truncated=[]), pooling="mean", normalize=True)

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        assert self.predictor is not None
        return self.predictor.predict(list(texts))


def load_served(path: str | Path, *, max_tokens: int = 16384) -> Served:
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
        pred = Predictor.load(p, max_tokens=max_tokens)
        # embeddings get their own Engine over the same weights: its own tokenizer object, because the head's
        # prediction code changes its tokenizer's truncation on the model thread while requests tokenize elsewhere
        embed = copy.copy(pred.engine)  # the same encoder module (forwards all run on the one model thread)
        embed.tokenizer = Tokenizer.from_str(pred.engine.tokenizer.to_str())  # with the engine's truncation settings
        return Served(name=p.resolve().parent.name if p.name == "finetune" else p.name, engine=embed, predictor=pred)
    resolved = resolve_model(str(path))
    if not Path(resolved).is_dir():
        raise EncoderforgeError(f"{path}: not a model directory, run directory or zoo name; pass one of those")
    return Served(name=Path(resolved).name, engine=Engine.from_pretrained(resolved, max_tokens=max_tokens))
