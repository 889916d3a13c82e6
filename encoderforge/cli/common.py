"""Shared CLI plumbing: turn user-facing errors into one clean line and a non-zero exit."""

from __future__ import annotations

import contextlib
import errno
import sys
from enum import Enum
from typing import Iterator

import typer

from encoderforge import EncoderforgeError


@contextlib.contextmanager
def fail_on_error() -> Iterator[None]:
    """Print `error: <message>` to stderr and exit 1 for EncoderforgeError (no traceback)."""
    try:
        yield
    except EncoderforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    except OSError as e:  # disk full, permission denied, a path that vanished: the user's to fix, not a bug
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        raise typer.Exit(1) from None


def os_error_line(e: OSError) -> str:
    """`<path>: <problem>; <fix>` for an OSError."""
    path = e.filename or "<unknown path>"
    fix = {
        errno.EACCES: "check its permissions or choose another path",
        errno.ENOSPC: "free disk space and rerun",
        errno.EROFS: "choose a writable location",
        errno.ENOENT: "check the path",
        errno.EISDIR: "pass a file, not a directory",
        errno.ENOTDIR: "a parent of the path is a file",
    }
    return f"{path}: {e.strerror or e}; {fix.get(e.errno or 0, 'check the path and rerun')}"


class Pooling(str, Enum):
    """--pooling of a plain encoder (an embed run sets its own)."""

    mean = "mean"
    cls = "cls"


class PrecisionOpt(str, Enum):
    """--precision of the inference commands (typer lists the choices in --help and refuses others)."""

    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"
