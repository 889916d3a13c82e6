"""`encoderforge export onnx --model RUN` for an `embed` run: a graph that outputs the run's own vectors.

An embed run's vectors are its encoder's pooled vectors, rotated (`index rotate`) and cut to its Matryoshka `dims`,
then L2-normalised; exporting RUN/model alone would give full-width, unrotated vectors that the run's indexes and
servers do not use. The graph folds the rotation's first `dims` columns (or the identity's) into one (C, d) matmul
after pooling, and the parity check compares ONNX Runtime with `Embedder.embed`, the loader every index and server
uses. The file's `metadata_props` carry the settings a consumer needs (the graph does not truncate: max_length).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch

from encoderforge import EncoderforgeError, require
from encoderforge.compression.onnx_files import check_output_path
from encoderforge.compression.quantize import int8_fidelity
from encoderforge.index.embedder import Embedder, embed_run_meta, load_embedder
from encoderforge.inference.onnx_export import (
    SAMPLE_TEXTS,
    ExportReport,
    OnnxPooling,
    encode_padded,
    export_onnx,
    onnx_session,
    run_onnx,
)
from encoderforge.model import checkpoint
from encoderforge.model.zoo import resolve_model


def is_embed_run(model: str | Path) -> bool:
    """True for an `embed` run directory (task.json of kind embed); other run kinds raise, checkpoints are False."""
    path = resolve_model(model)
    return path.is_dir() and embed_run_meta(path) is not None


def describe(e: Embedder) -> str:
    """'mean pooling, rotated, first 32 dims, normalised; inputs of at most 192 tokens': what the exported vectors are
    (the graph does not truncate: the caller cuts token ids at the run's length, as the run's loaders do)."""
    s = e.spec
    parts = [f"{s.pooling} pooling", *(["rotated"] if e.rotation is not None else [])]
    parts += [f"first {s.dims} dims"] if s.dims else []
    return ", ".join(parts + (["normalised"] if s.normalize else [])) + f"; inputs of at most {s.max_length} tokens"


def projection(e: Embedder) -> torch.Tensor | None:
    """The (C, d) matrix after pooling: the rotation's first d columns, the identity's for a plain cut, or None."""
    hidden = e.engine.encoder.cfg.hidden_size
    d = e.spec.dims or hidden
    if e.rotation is None and d == hidden:
        return None
    r = e.rotation if e.rotation is not None else np.eye(hidden, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(r[:, :d], dtype=np.float32))


def export_embed_run(
    run: str | Path, out_path: str | Path, *, pooling: str | None = None, int8: bool = False, opset: int = 17
) -> tuple[ExportReport, str]:
    """Export an embed run's vectors to ONNX and check ONNX Runtime against `Embedder.embed` on the sample texts.

    Args:
        pooling: None, or the run's own pooling (another one is an error: the run's vectors are what it stands for).
    Returns:
        the ExportReport and a description of the vectors ('mean pooling, rotated, first 96 dims, normalised; ...').
    """
    own = (embed_run_meta(resolve_model(run)) or {}).get("pooling", "mean")
    if pooling is not None and pooling != own:
        raise EncoderforgeError(
            f"--pooling {pooling}: {run} is an embed run, exported with its own pooling ({own}), rotation and dims; "
            f"omit --pooling, or export its model/ directory ({Path(run) / 'model'}) for the encoder alone"
        )
    check_output_path(out_path)
    for dep in ("onnx", "onnxruntime"):
        require(dep, "onnx")
    e = load_embedder(run)
    if e.spec.pooling not in ("mean", "cls"):  # task.json is read as written: say so rather than export garbage
        raise EncoderforgeError(f"{Path(run) / 'task.json'}: pooling {e.spec.pooling!r} cannot be exported; mean or cls")
    encoder = checkpoint.load(Path(run) / "model").encoder  # a fresh copy: the engine's may hold packed kernels
    sp = e.spec
    meta = {"encoderforge.run": str(Path(run).resolve()), "pooling": sp.pooling, "max_length": str(sp.max_length)}
    meta |= {"dims": str(sp.dim), "rotated": str(e.rotation is not None).lower(), "normalize": str(sp.normalize).lower()}
    out = export_onnx(
        encoder,
        out_path,
        pooling=cast(OnnxPooling, sp.pooling),
        opset=opset,
        int8=int8,
        project=projection(e),
        normalize=sp.normalize,
        metadata=meta,
    )
    ids, mask = encode_padded(e.engine.tokenizer, SAMPLE_TEXTS, max_length=sp.max_length)
    want = torch.from_numpy(e.embed(list(SAMPLE_TEXTS)))
    got = torch.from_numpy(run_onnx(onnx_session(out), ids, mask))
    fid = int8_fidelity(want, got)
    report = ExportReport(
        path=out,
        size_bytes=out.stat().st_size,
        n_texts=len(SAMPLE_TEXTS),
        max_abs_diff=float((got - want).abs().max()),
        mean_cosine=fid["mean_cosine"],
        min_cosine=fid["min_cosine"],
    )
    return report, describe(e)
