"""Reading the compressed-model files (`int8_store`, `int4`): safetensors with a `format` tag in their metadata.

One place for what both readers must say about a bad file: missing, foreign (another format), corrupt or truncated,
or incomplete (a key or shape that the format needs is off) - each a one-line error naming the file and the fix.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from encoderforge import EncoderforgeError


def read_packed(
    path: Path, fmt: str, *, kind: str, fix: str, writer: str, foreign_hint: str = ""
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file whose metadata says format=`fmt`.

    Args:
        kind: what the file is, for the messages ("int8").
        fix: what to do about a broken file ("write it again").
        writer: the function that writes such files, named when the file is missing.
        foreign_hint: appended when the file is safetensors of another format (e.g. where to load it instead).
    """
    if not path.is_file():
        raise EncoderforgeError(f"{path}: no such file; write one with {writer}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != fmt:
                raise EncoderforgeError(
                    f"{path}: not an encoderforge {kind} file (metadata format {meta.get('format')!r}){foreign_hint}"
                )
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise EncoderforgeError(f"{path}: corrupt or truncated safetensors file ({e}); {fix}") from None


@contextlib.contextmanager
def incomplete_as_error(path: Path, *, kind: str, fix: str) -> Iterator[None]:
    """Inside: a missing key or a shape that does not fit (a hand-edited or foreign file) becomes one line."""
    try:
        yield
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise EncoderforgeError(
            f"{path}: incomplete {kind} file ({type(e).__name__}: {str(e).splitlines()[0][:160]}); {fix}"
        ) from None
