"""Output-path checks and atomic writes for ONNX files, shared by ONNX export (inference/onnx_export.py) and ONNX
int8 quantization (compression/quantize.py).

Why here: inference imports compression (int8 export, fidelity), never the other way round, so the helpers both
need live on the compression side; before, each module reached into the other with a function-local import (a
hidden import cycle). Their final home is fileio.py (the package's output-path checks), once its owner takes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from encoderforge import EncoderforgeError


def check_output_path(out_path: str | Path) -> Path:
    """Validate an ONNX output path before any work, creating nothing: a `.onnx` file name whose nearest
    existing ancestor is a writable directory."""
    out = Path(out_path)
    if out.is_dir():
        raise EncoderforgeError(f"{out}: is a directory; pass a file path such as {out / 'model.onnx'}")
    if out.suffix != ".onnx":
        raise EncoderforgeError(f"{out}: the output file name must end in .onnx, e.g. {out.with_suffix('.onnx')}")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EncoderforgeError(f"{ancestor}: is a file, so {out} cannot be created; choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise EncoderforgeError(f"{ancestor}: not writable; choose another output location")
    return out


@contextlib.contextmanager
def temp_dir_beside(path: Path) -> Iterator[Path]:
    """A hidden temporary directory next to `path` (same filesystem, so os.replace is atomic), always removed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise EncoderforgeError(f"{path.parent}: cannot write there ({e.strerror}); choose another output location") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
