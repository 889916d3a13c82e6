"""`encoderforge index rotate`: a copy of an embedding model whose vectors are rotated to a corpus's principal
directions (index/rotation.py), so that cutting them to their first `dims` coordinates loses less.

    encoderforge index rotate runs/embed/wordnet corpus.jsonl --out runs/embed/wordnet-rot --dims 96
    encoderforge index build corpus.jsonl runs/ix96 --model runs/embed/wordnet-rot        # a 96-dim index

The output is an `embed` run (model/, task.json with "rotation" and "dims", rotation.safetensors, rotation.json with
what was fitted): everything that loads a model (index build/search, eval-retrieval, serve) applies the rotation,
and its weights hash differs from the source's, so an index built with one refuses queries from the other.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir, check_output, file_digest
from encoderforge.index.embedder import load_embedder
from encoderforge.index.readers import check_docs, iter_docs
from encoderforge.index.rotation import ROTATION_FILE, fit_rotation, save_rotation
from encoderforge.inference.precision import Precision
from encoderforge.model.zoo import ZOO, resolve_model

SAMPLE = 100_000  # documents embedded to fit the rotation: a d x d fit (d <= 1024) is stable long before this


@dataclass
class RotateResult:
    out: Path
    sampled: int
    dim: int
    dims: int | None
    kept: dict[int, float]  # width -> share of the sample's squared norm its first coordinates keep, rotated
    kept_before: dict[int, float]  # the same without the rotation
    seconds: float


def index_rotate(
    model: str | Path,
    corpus: str | Path,
    out: str | Path,
    *,
    dims: int | None = None,
    sample: int = SAMPLE,
    seed: int = 0,
    pooling: str = "mean",
    max_length: int | None = None,
    threads: int | None = None,
    precision: Precision = "fp32",
) -> RotateResult:
    """Fit the rotation on (a seeded sample of) `corpus` embedded by `model` and write the rotated run to `out`.

    Args:
        model: an `embed` run, a checkpoint directory or a zoo name.
        corpus: JSONL of {"id", "text"}: the documents the index will hold.
        out: the new run directory (never overwritten).
        dims: the run's default cut (task.json "dims"); None keeps the source's (required when it has none).
        sample: documents embedded for the fit at most.
        pooling, max_length: for a plain encoder (an embed run keeps its own).
        threads: torch intra-op threads.
        precision: the engine's GEMM precision for embedding the sample (fp32, bf16 or auto; see `Engine`).
    """
    t0, out = time.perf_counter(), Path(out)
    if out.exists():
        raise EncoderforgeError(f"{out}: already exists; encoderforge never overwrites it — choose another --out")
    if sample < 2:
        raise EncoderforgeError(f"--sample must be >= 2, got {sample}")
    src = resolve_model(model)
    check_output(out, [corpus, src], expect="dir")
    n_docs = check_docs(corpus)
    if n_docs < 2:
        raise EncoderforgeError(f"{corpus}: a rotation is fitted on at least 2 documents; give the corpus the index will hold")
    if threads:
        import torch

        torch.set_num_threads(threads)
    task_file = src / "task.json"
    task = json.loads(task_file.read_text(encoding="utf-8")) if task_file.is_file() else {}
    if task.get("rotation"):
        raise EncoderforgeError(f"{task_file}: this run is already rotated; rotate its source model instead")
    if dims is None and not task.get("dims"):
        raise EncoderforgeError(
            "--dims is needed: the rotation changes nothing at full width, only the cut (e.g. --dims 96 for 384-dim vectors)"
        )
    emb = load_embedder(model, pooling=pooling, max_length=max_length, precision=precision)
    hidden = emb.engine.encoder.cfg.hidden_size
    if dims is not None and not 0 < dims <= hidden:
        raise EncoderforgeError(f"dims={dims} must be in 1..{hidden} (the model's hidden size); lower --dims (index.dims)")
    emb.spec = replace(emb.spec, dims=None, dim=hidden)  # fit on full-width vectors
    pick = np.sort(np.random.default_rng(seed).choice(n_docs, size=min(sample, n_docs), replace=False))
    keep = set(pick.tolist())  # streamed: only the sampled documents' texts are held, however large the corpus
    x = emb.embed([d.text for i, d in enumerate(iter_docs(corpus)) if i in keep])
    rotation, share = fit_rotation(x)
    widths = sorted({w for w in (dims, hidden // 2, hidden // 4, hidden // 8) if w})
    before = np.cumsum(np.sum(x.astype(np.float64) ** 2, axis=0))
    kept = {w: float(share[:w].sum()) for w in widths}  # the rotated first w coordinates' share of the sample's norm
    kept_before = {w: float(before[w - 1] / before[-1]) for w in widths}
    with atomic_dir(out, overwrite=False) as tmp:
        shutil.copytree(src / "model" if task else src, tmp / "model")
        save_rotation(tmp / ROTATION_FILE, rotation)
        s = emb.spec
        task = task or {"kind": "embed", "pooling": s.pooling, "normalize": s.normalize, "max_length": s.max_length}
        source = str(model) if str(model) in ZOO else str(Path(model).resolve())
        task.update(rotation=ROTATION_FILE, dims=dims if dims is not None else task.get("dims"), rotated_from=source)
        task.setdefault("source_model", source)
        (tmp / "task.json").write_text(json.dumps(task, indent=2), encoding="utf-8")
        info = {
            "source": source,
            "model_hash": s.model_hash,  # the source's weights: a run made from other weights is another rotation
            "asked": {"pooling": pooling, "max_length": max_length},  # a plain encoder's; an embed run keeps its own
            "corpus": str(Path(corpus).resolve()),
            "corpus_sha256": file_digest(corpus),
            "documents": n_docs,
            "sampled": len(pick),
            "seed": seed,
            "precision": emb.engine.precision,  # what embedded the sample (bf16 only where the CPU has it)
            "energy_kept": {"rotated": kept, "unrotated": kept_before},
        }
        (tmp / "rotation.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return RotateResult(out, len(pick), hidden, task["dims"], kept, kept_before, time.perf_counter() - t0)
