"""`encoderforge embed`: a text file in, one vector per line out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from encoderforge import EncoderforgeError
from encoderforge.fileio import check_output
from encoderforge.index.embedder import embed_run_meta, load_embedder, run_settings, run_vectors_note
from encoderforge.inference.engine import Engine
from encoderforge.inference.precision import Precision
from encoderforge.inference.textio import read_lines, write_vectors
from encoderforge.model.zoo import resolve_model


@dataclass
class EmbedResult:
    out: Path
    count: int
    dim: int
    truncated: int
    precision: str  # what ran: "fp32" or "bf16"
    kernel: str  # what ran the linear layers: "onednn-packed" or "torch"
    note: str = ""  # why a requested precision or kernel was not used ("" when it was)


def embed_file(
    model: str | Path,
    input: str | Path,
    out: str | Path,
    *,
    pooling: Literal["mean", "cls"] | None = None,
    normalize: bool | None = None,
    max_tokens: int = 2048,
    max_length: int | None = None,
    precision: Precision = "fp32",
) -> EmbedResult:
    """Embed every line of `input` (or stdin for '-') with `model` and write .npy or JSONL to `out`.

    Args:
        model: a checkpoint directory (ours or Hugging Face BERT), a zoo name such as 'minilm-l6', or an `embed` run
            (its task.json's pooling, max_length, normalisation, rotation and dims: a different value asked below is
            an error).
        pooling: 'mean' (sentence-transformers' default; None = mean or the run's) or 'cls'.
        normalize: L2-normalize the vectors (None = yes, or the run's).
        max_tokens: token budget per forward pass (caps memory).
        max_length: longest sequence (None = 256, or the run's); longer texts are truncated and counted.
        precision: 'fp32', 'bf16' (bf16 GEMMs; needs AVX512-BF16 or AMX, checked by a fidelity gate) or 'auto'
            (bf16 where the CPU has it and it measures faster); see `Engine`.
    """
    if max_tokens < 1 or (max_length is not None and max_length < 2):
        raise EncoderforgeError(f"--max-tokens must be >= 1 and --max-length >= 2 (got {max_tokens}, {max_length})")
    model_dir = resolve_model(model)
    check_output(out, [input, model_dir])  # before any compute: never replace the input or write into the model
    run = embed_run_meta(model_dir)  # an `embed` run: its own pooling, length, normalisation, rotation and dims
    asked = {"pooling": pooling, "normalize": normalize, "max_length": max_length}
    if run:
        _check_run_flags(model_dir, run_settings(run), asked)
    pool, norm, length = pooling or "mean", True if normalize is None else normalize, max_length or 256
    notes = [] if run else [run_vectors_note(model_dir, {"pooling": pool, "normalize": norm, "max_length": length})]
    texts = read_lines(input)
    if run:
        embedder = load_embedder(model_dir, max_tokens=max_tokens, precision=precision)
        engine, encoded = embedder.engine, embedder.engine.tokenize(texts)
        vectors = embedder.embed_encoded(encoded)
    else:
        engine = Engine.from_pretrained(model_dir, max_tokens=max_tokens, max_length=length, precision=precision)
        encoded = engine.tokenize(texts)
        vectors = engine.embed_encoded(encoded, pooling=pool, normalize=norm)
    write_vectors(out, vectors, texts)
    return EmbedResult(
        out=Path(out),
        count=len(texts),
        dim=vectors.shape[1],
        truncated=len(encoded.truncated),
        precision=engine.precision,
        kernel=engine.kernel,
        note="; ".join(n for n in [*engine.notes, *notes] if n),
    )


def _check_run_flags(run: Path, own: dict[str, Any], asked: dict[str, Any]) -> None:
    """A flag given with an embed run must agree with the run's own setting (its vectors are what it stands for)."""
    for key, value in asked.items():
        if value is not None and own.get(key) is not None and value != own[key]:
            flag = {"pooling": f"--pooling {value}", "normalize": "--no-normalize" if not value else "--normalize"}.get(
                key, f"--max-length {value}"
            )
            raise EncoderforgeError(
                f"{flag}: {run} is an embed run whose vectors use {key} {own[key]}; omit the flag, or embed its model/ "
                f"directory ({run / 'model'}) for the encoder's own vectors with other settings"
            )
