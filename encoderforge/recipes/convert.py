"""`encoderforge convert`: Hugging Face BERT <-> encoderforge checkpoint directories."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from encoderforge.fileio import check_output
from encoderforge.model.checkpoint import export_hf, load, save
from encoderforge.model.zoo import resolve_model


def convert(src: str | Path, out: str | Path, *, to: Literal["ours", "hf"] = "ours", overwrite: bool = False) -> Path:
    """Load `src` (either format, or a zoo name) and write it to `out` in the `to` format, tokenizer included."""
    src = resolve_model(src)
    check_output(out, [src], expect="dir")  # before loading: never write over or into the source checkpoint
    loaded = load(src)
    if to == "hf":
        return export_hf(loaded.encoder, out, tokenizer_dir=src, overwrite=overwrite)
    return save(loaded.encoder, out, tokenizer_dir=src, extra=loaded.extra, overwrite=overwrite)
