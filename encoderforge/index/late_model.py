"""A fine-tuned ColBERT run (`finetune colbert`) as the model of a late-interaction index: texts -> per-token unit
vectors through the padding-free Engine, the EmbedSpec that records which model made them (so a query from another
model is refused, as for dense indexes), and `build_late`: corpus JSONL -> saved LateIndex.

    encoderforge index build corpus.jsonl runs/ix-colbert --model runs/colbert     # a colbert run: a late index
    encoderforge index search runs/ix-colbert "who may copy the work?"
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from encoderforge import EncoderforgeError
from encoderforge.index.build import BuildResult
from encoderforge.index.embedder import WEIGHTS, weights_digest
from encoderforge.index.late import KIND, LateIndex
from encoderforge.index.manifest import MANIFEST, EmbedSpec
from encoderforge.index.readers import read_docs
from encoderforge.inference.engine import DEFAULT_MAX_TOKENS, Engine
from encoderforge.inference.precision import Precision
from encoderforge.model import checkpoint
from encoderforge.tasks.colbert import DIM, SPEC
from encoderforge.tasks.sequences import encode_texts
from encoderforge.tokenization import load_tokenizer

CHUNK = 2_000  # documents per Engine call; every token vector is held until compression (no shards, no resume yet:
# a 100k x 256-token corpus holds ~13 GB of 128-d float32 vectors; a killed build starts again)


def is_colbert_run(model: str | Path) -> bool:
    task = Path(model) / "task.json"
    return task.is_file() and json.loads(task.read_text(encoding="utf-8")).get("kind") == KIND


@dataclass
class LateEmbedder:
    """A ColBERT run loaded for indexing and querying.

    Example:
        >>> e = load_late_embedder("runs/colbert")
        >>> [m.shape for m in e.encode(["MIT License"])]   # [(4, 128)]: [CLS], mit, license, [SEP]
    """

    engine: Engine
    head: torch.nn.Module
    spec: EmbedSpec

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (L_i, D) float32 matrix of unit token vectors per text ([CLS] and [SEP] included, as in training)."""
        ids = encode_texts(self.engine.tokenizer, [(t,) for t in texts], self.spec.max_length).ids
        out: list[np.ndarray] = [np.zeros((0, self.spec.dim), np.float32)] * len(ids)
        for b in self.engine.forward_batches(ids):
            vec = self.head(b.hidden.float()).cpu().numpy()  # (B, T, D)
            for row, i in enumerate(b.index):
                out[i] = vec[row, : len(ids[i])]
        return out


def load_late_embedder(run: str | Path, *, max_tokens: int = DEFAULT_MAX_TOKENS, precision: Precision = "fp32") -> LateEmbedder:
    """Load a `finetune colbert` run directory (task.json kind "colbert" + model/ with the head); `precision` as
    `load_embedder`'s."""
    run = Path(run)
    if not is_colbert_run(run):
        raise EncoderforgeError(f"{run}: not a `finetune colbert` run (no task.json of kind colbert); pass the ColBERT run")
    meta = json.loads((run / "task.json").read_text(encoding="utf-8"))
    weights = next((run / "model" / w for w in WEIGHTS if (run / "model" / w).is_file()), None)
    if weights is None:
        raise EncoderforgeError(f"{run / 'model'}: no {WEIGHTS[0]}; the run is incomplete: fine-tune it again")
    loaded = checkpoint.load(run / "model")
    state = {k[len("head.") :]: v for k, v in loaded.extra.items() if k.startswith("head.")}
    head = SPEC.load_head(loaded.encoder.cfg, meta, state)
    length = int(meta["max_length"])
    tok = load_tokenizer(run / "model")
    engine = Engine(loaded.encoder, tok, max_tokens=max(max_tokens, length), max_length=length, precision=precision)
    spec = EmbedSpec(
        model=str(run.resolve()),
        model_hash=weights_digest(str(weights)),
        dim=int(meta.get("dim", DIM)),
        pooling="tokens",  # one vector per token: MaxSim, not a pooled vector
        normalize=True,
        max_length=length,
    )
    return LateEmbedder(engine, head, spec)


def build_late(
    corpus: str | Path,
    out: str | Path,
    embedder: LateEmbedder,
    *,
    bits: Literal[4, 8] = 8,
    store_text: bool = True,
    overwrite: bool = False,
) -> BuildResult:
    """Encode every document of a corpus JSONL and save a compressed LateIndex (atomically: a killed build leaves
    no index and does not resume, unlike the sharded dense build; run it again)."""
    t0, out = time.perf_counter(), Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise EncoderforgeError(f"{out}: already holds an index; pass --overwrite to rebuild it or choose another output")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise EncoderforgeError(f"{out}: exists and is not an index; encoderforge never deletes it — choose another output")
    docs = read_docs(corpus)
    mats: list[np.ndarray] = []
    for i in range(0, len(docs), CHUNK):
        mats += embedder.encode([d.text for d in docs[i : i + CHUNK]])
    meta = [{**d.meta, "text": d.text} if store_text else dict(d.meta) for d in docs]
    index = LateIndex.build([d.id for d in docs], mats, meta, bits=bits, spec=embedder.spec)
    index.save(out)
    e = embedder.engine
    return BuildResult(out, len(docs), KIND, 1, 1, time.perf_counter() - t0, e.precision, "; ".join(e.notes))
