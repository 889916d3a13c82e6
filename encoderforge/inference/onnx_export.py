"""Export an `Encoder` to ONNX (optionally int8) and check it against the torch model.

Shape legend: B batch, T padded length, C hidden size. The graph takes `input_ids` and `attention_mask`
(int64, (B, T), both axes dynamic) and returns `last_hidden_state` (B, T, C) or `pooled` (B, C).

Why the TorchScript exporter (`dynamo=False`): the dynamo exporter (torch.export) refuses
`Encoder.forward`'s data-dependent `if mask.all()` shortcut (GuardOnDataDependentSymNode). Tracing records
the branch the example takes; we always trace a padded example, so the masked path is recorded, and
masking with an all-ones mask is exact, so one graph serves padded and unpadded batches alike.
Why the padded "eager" graph: our "varlen" path gathers tokens by data-dependent indices (it cannot be
traced into shape-generic ONNX). "sdpa" exports too, but ONNX has no fused attention op at opset 17, so it
lowers to the same MatMul/Softmax plus extra scale and NaN-guard nodes (Sqrt, IsNaN, Where); eager is the
leaner graph and the readable reference, and matches torch to ~4e-6 on MiniLM (docs/results-onnx.md).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from encoderforge import EncoderforgeError, require
from encoderforge.compression.onnx_files import check_output_path, temp_dir_beside
from encoderforge.compression.quantize import int8_fidelity, quantize_onnx
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool

OnnxPooling = Literal["none", "mean", "cls"]
EXPORT_BACKEND = "eager"
INPUT_NAMES = ("input_ids", "attention_mask")

# A few built-in texts of different lengths: the parity check always sees a padded batch.
SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime runs the exported graph.",
    "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance "
    "with the License. Unless required by applicable law or agreed to in writing, software distributed "
    "under the License is distributed on an AS IS BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.",
    "ok",
)


class _ExportGraph(nn.Module):
    """What the ONNX graph computes: encoder, then optional pooling (pooling is written once, in heads.pool), then
    an embed run's projection (its rotation's first `dims` columns) and L2 normalisation, when asked."""

    def __init__(self, encoder: Encoder, pooling: OnnxPooling, project: torch.Tensor | None = None, normalize: bool = False):
        super().__init__()
        self.encoder, self.pooling, self.normalize = encoder, pooling, normalize
        self.project: torch.Tensor | None
        self.register_buffer("project", project, persistent=False)  # (C, d) or None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (B, T, C)
        if self.pooling == "none":
            return hidden
        vec = pool(hidden, attention_mask, self.pooling)  # (B, C)
        if self.project is not None:
            vec = vec @ self.project  # (B, d)
        return torch.nn.functional.normalize(vec, dim=-1) if self.normalize else vec


def export_onnx(
    encoder: Encoder,
    out_path: str | Path,
    *,
    pooling: OnnxPooling = "none",
    opset: int = 17,
    int8: bool = False,
    project: torch.Tensor | None = None,
    normalize: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export `encoder` to an ONNX file, atomically (no half-written file is ever left at `out_path`).

    Args:
        encoder: our `Encoder`; its attention backend and train/eval mode are restored afterwards.
        out_path: destination `.onnx` file; missing parent directories are created.
        pooling: "none" -> output `last_hidden_state` (B, T, C); "mean" / "cls" -> output `pooled` (B, C).
        opset: ONNX opset (17 has LayerNormalization).
        int8: also apply ONNX Runtime dynamic int8 quantization (see `compression.quantize.quantize_onnx`).
        project: (C, d) matrix applied to the pooled vector (an embed run's rotation and Matryoshka cut); pooled only.
        normalize: L2-normalise the pooled (projected) vector; pooled only.
        metadata: written to the model's `metadata_props` (what a consumer must know, e.g. the input length).
    Returns:
        the written path.
    Example:
        >>> export_onnx(load(resolve_model("minilm-l6")).encoder, "minilm.onnx", pooling="mean")
    """
    onnx = require("onnx", "onnx")

    if pooling not in ("none", "mean", "cls"):
        raise EncoderforgeError(f"pooling={pooling!r} is not supported; use 'none', 'mean' or 'cls'")
    if pooling == "none" and (project is not None or normalize):
        raise EncoderforgeError("a projection or normalisation applies to pooled vectors; pass pooling 'mean' or 'cls'")
    out = check_output_path(out_path)
    output_name = "last_hidden_state" if pooling == "none" else "pooled"
    out_axes = {0: "batch", 1: "sequence"} if pooling == "none" else {0: "batch"}
    device = next(encoder.parameters()).device
    ids, mask = (t.to(device) for t in _example_inputs(encoder.cfg.vocab_size))
    backend, training = encoder.cfg.attention, encoder.training
    try:
        encoder.set_attention(EXPORT_BACKEND).eval()
        with temp_dir_beside(out) as tmp, torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings about the `mask.all()` branch and Python-int shapes are expected (see module doc).
            warnings.simplefilter("ignore")
            fp32 = tmp / "model.onnx"
            torch.onnx.export(
                _ExportGraph(encoder, pooling, None if project is None else project.to(device), normalize).eval(),
                (ids, mask),
                str(fp32),
                dynamo=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=[output_name],
                do_constant_folding=True,
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    output_name: out_axes,
                },
            )
            onnx.checker.check_model(str(fp32))
            if metadata:
                graph = onnx.load(str(fp32))
                onnx.helper.set_model_props(graph, metadata)
                onnx.save(graph, str(fp32))
            if int8:
                quantize_onnx(fp32, out)
            else:
                os.replace(fp32, out)
    finally:
        encoder.set_attention(backend).train(training)
    return out


def _example_inputs(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded (2, 8) example: the second row has padding, so tracing records the masked attention path."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab_size - 1), vocab_size, (2, 8), generator=gen)  # (B, T)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return ids * mask, mask


# ---- running and checking an exported file ---------------------------------------------------------


def onnx_session(path: str | Path, *, threads: int = 1, spinning: bool = True):
    """An ONNX Runtime CPU session with `threads` intra-op threads (inter-op 1: one graph at a time). `spinning=False`
    parks its pool threads after each run instead of spin-waiting: for benchmarks that interleave ORT with torch on
    the same cores, where ORT's spinning threads otherwise slow whatever runs next."""
    ort = require("onnxruntime", "onnx")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise EncoderforgeError(f"{path}: ONNX Runtime cannot load it ({e}); re-export it") from None


def run_onnx(session, input_ids: torch.Tensor | np.ndarray, attention_mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run an exported graph on a padded int64 batch: (B, T) ids and mask -> (B, T, C) or (B, C)."""
    feed = {name: np.asarray(x, dtype=np.int64) for name, x in zip(INPUT_NAMES, (input_ids, attention_mask))}
    return session.run(None, feed)[0]


def encode_padded(tokenizer, texts: Sequence[str], *, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize texts ([CLS] ... [SEP], truncated to max_length) into a right-padded (B, T) int64 batch + mask."""
    encs = [e.ids[:max_length] for e in tokenizer.encode_batch(list(texts))]
    T = max(len(e) for e in encs)
    ids = torch.zeros(len(encs), T, dtype=torch.long)  # (B, T); pad id 0 is masked out anyway
    mask = torch.zeros(len(encs), T, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        mask[i, : len(e)] = 1
    return ids, mask


@dataclass
class ExportReport:
    """What `export_checkpoint` wrote and how closely ONNX Runtime matches the torch model."""

    path: Path
    size_bytes: int
    n_texts: int
    max_abs_diff: float  # over real tokens (or pooled vectors), ONNX vs torch fp32
    mean_cosine: float  # of mean-pooled vectors (or the pooled output), ONNX vs torch fp32
    min_cosine: float


def export_checkpoint(
    model: str | Path,
    out_path: str | Path,
    *,
    pooling: OnnxPooling = "none",
    int8: bool = False,
    opset: int = 17,
    texts: Sequence[str] = SAMPLE_TEXTS,
) -> ExportReport:
    """Load a checkpoint (directory or zoo name), export it to ONNX and compare ONNX Runtime with torch.

    Args:
        model: checkpoint directory (encoderforge or Hugging Face BERT) or a zoo name such as "minilm-l6".
        out_path: destination `.onnx` file.
        pooling, int8, opset: as in `export_onnx`.
        texts: parity texts, tokenized with the checkpoint's tokenizer (random ids if it ships none).
    Returns:
        an ExportReport (path, file size, max |diff| and min cosine vs the torch fp32 model).
    """
    from encoderforge.model.checkpoint import load
    from encoderforge.model.zoo import resolve_model

    check_output_path(out_path)  # fail before the (slow) load
    for dep in ("onnx", "onnxruntime"):  # so does a missing extra (export needs onnx, the parity check onnxruntime)
        require(dep, "onnx")
    path = resolve_model(model)
    encoder = load(path).encoder
    out = export_onnx(encoder, out_path, pooling=pooling, opset=opset, int8=int8)
    ids, mask = _parity_batch(path, texts, encoder.cfg)
    with torch.no_grad():
        ref = encoder(ids, mask)  # (B, T, C)
    got = torch.from_numpy(run_onnx(onnx_session(out), ids, mask))
    if pooling != "none":
        ref = pool(ref, mask, pooling)  # (B, C)
        ref_vec, got_vec, diff = ref, got, (got - ref).abs()
    else:
        ref_vec, got_vec = pool(ref, mask, "mean"), pool(got, mask, "mean")
        diff = (got - ref).abs() * mask[..., None]  # padded positions are not compared
    fid = int8_fidelity(ref_vec, got_vec)
    return ExportReport(
        path=out,
        size_bytes=out.stat().st_size,
        n_texts=len(ids),
        max_abs_diff=float(diff.max()),
        mean_cosine=fid["mean_cosine"],
        min_cosine=fid["min_cosine"],
    )


def _parity_batch(path: Path, texts: Sequence[str], cfg) -> tuple[torch.Tensor, torch.Tensor]:
    from encoderforge.tokenization import load_tokenizer

    try:
        tok = load_tokenizer(path)
    except EncoderforgeError:  # a checkpoint without tokenizer files: compare on random ids instead
        ids, mask = _example_inputs(cfg.vocab_size)
        return ids, mask
    return encode_padded(tok, texts, max_length=min(cfg.max_position, 128))
