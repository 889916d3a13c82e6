"""A fine-tuned ColBERT run (`finetune colbert`) as the model of a late-interaction index: texts -> per-token unit
vectors through the padding-free Engine, the EmbedSpec that records which model made them (so a query from another
model is refused, as for dense indexes), and `build_late`: corpus JSONL -> saved LateIndex.

    encoderforge index build corpus.jsonl runs/ix-colbert --model runs/colbert     # a colbert run: a late index
    encoderforge index search runs/ix-colbert "who may copy the work?"
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file, file_digest
from encoderforge.index.build import (
    PARTIAL,
    BuildResult,
    check_build_target,
    chunks,
    doc_meta,
    read_shard,
    read_shard_rows,
    resume_point,
    write_shard,
)
from encoderforge.index.embedder import WEIGHTS, weights_digest, weights_file
from encoderforge.index.late import KIND, LateIndex, default_nlist, train_codec, unit_tokens
from encoderforge.index.manifest import EmbedSpec
from encoderforge.index.readers import check_docs, iter_docs
from encoderforge.inference.engine import DEFAULT_MAX_TOKENS, Engine
from encoderforge.inference.precision import Precision
from encoderforge.model import checkpoint
from encoderforge.tasks.colbert import DIM, SPEC
from encoderforge.tasks.sequences import encode_texts
from encoderforge.tokenization import load_tokenizer

SHARD_SIZE = 2_000  # documents per resumable shard (one Engine call each). The token vectors of every shard are read
# back for compression at the end (the centroids are trained on all of them): a 100k x 256-token corpus needs ~13 GB
# of 128-d float32 vectors then; shards on disk make a killed build resume, not shrink that peak.


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
    weights = weights_file(run / "model")
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


# token vectors the codec is trained on when the corpus has more (2^18 x 128-d float32 = 128 MiB), or 39 per centroid
# when its default centroid count needs more; ColBERTv2 likewise trains its centroids on a sample of the embeddings
TRAIN_TOKENS = 2**18


def _token_sample(partial: Path, shards: int, total: int, n: int, seed: int = 0) -> np.ndarray:
    """(n, D) unit token vectors: every token in corpus order when n == total, else a seeded uniform draw of n."""
    if n >= total:
        return np.concatenate([_shard_tokens(partial, s) for s in range(shards)])
    pick = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))  # global token numbers
    parts, start = [], 0
    for s in range(shards):
        x = _shard_tokens(partial, s)
        mine = pick[(pick >= start) & (pick < start + len(x))] - start
        parts.append(x[mine])
        start += len(x)
    return np.concatenate(parts)


def _shard_tokens(partial: Path, s: int, dim: int | None = None) -> np.ndarray:
    x = read_shard(partial, s)[2]
    return unit_tokens(x, dim or x.shape[1], f"{partial}/shard {s}")


def build_late(
    corpus: str | Path,
    out: str | Path,
    embedder: LateEmbedder,
    *,
    bits: Literal[4, 8] = 8,
    store_text: bool = True,
    overwrite: bool = False,
    shard_size: int = SHARD_SIZE,
    train_tokens: int | None = None,
) -> BuildResult:
    """Encode every document of a corpus JSONL in resumable shards (as the dense build: index/build.py's layout, plus
    each shard's token counts), train the codec on `train_tokens` token vectors drawn from them (default: all of a
    corpus of up to 2^18 tokens, else 39 per centroid of `default_nlist` for the whole corpus, ColBERTv2's count),
    then compress shard by shard into a LateIndex saved atomically: a large corpus' float vectors are never all in
    memory at once. Rerun a killed build to resume at its first unfinished shard."""
    t0, out = time.perf_counter(), Path(out)
    check_build_target(out, shard_size, overwrite)
    if train_tokens is not None and train_tokens < 39:
        raise EncoderforgeError(f"train_tokens must be >= 39 (k-means wants 39 points per centroid), got {train_tokens}")
    if bits not in (4, 8):  # train_codec checks it too, but only after the whole corpus is encoded
        raise EncoderforgeError(f"late index: bits must be 4 or 8, got {bits!r}")
    count, partial = check_docs(corpus), out / PARTIAL
    key = {"corpus": file_digest(corpus), "embed": asdict(embedder.spec), "shard_size": shard_size, "store_text": store_text}
    key["precision"] = embedder.engine.precision
    done, embedded = resume_point(partial, key), 0
    shards = math.ceil(count / shard_size)
    for s, docs in enumerate(chunks(iter_docs(corpus), shard_size)):
        if s < done:
            continue  # encoded by an earlier, interrupted run
        mats = embedder.encode([d.text for d in docs])
        with atomic_file(partial / f"shard-{s:05d}.lengths.npy", "wb") as f:
            np.save(f, np.array([len(m) for m in mats], dtype=np.int64))
        write_shard(partial, s, [d.id for d in docs], [doc_meta(d, store_text) for d in docs], np.concatenate(mats))
        with atomic_file(partial / "progress.json") as f:
            json.dump({"key": key, "done": s + 1}, f)
        embedded += 1
    ids: list[str] = []
    metas: list[dict] = []
    lengths: list[np.ndarray] = []
    for s in range(shards):
        shard_ids, shard_meta = read_shard_rows(partial, s)
        ids += shard_ids
        metas += shard_meta
        lengths.append(np.load(partial / f"shard-{s:05d}.lengths.npy"))
    total = int(sum(x.sum() for x in lengths))
    want = max(TRAIN_TOKENS, 39 * default_nlist(total)) if train_tokens is None else train_tokens
    n_train = min(total, want)
    ivf = train_codec(
        _token_sample(partial, shards, total, n_train), bits=bits, nlist=max(1, min(default_nlist(total), n_train // 39))
    )
    codes = np.concatenate([ivf.sa_encode(_shard_tokens(partial, s, ivf.d)) for s in range(shards)])  # one shard at a time
    extra = {"train_tokens": n_train}
    LateIndex.from_codes(ivf, codes, np.concatenate(lengths), ids, metas, bits=bits, spec=embedder.spec, extra=extra).save(out)
    e = embedder.engine
    return BuildResult(out, count, KIND, shards, embedded, time.perf_counter() - t0, e.precision, "; ".join(e.notes))
