"""Shared CLI plumbing: turn user-facing errors into one clean line and a non-zero exit."""

from __future__ import annotations

import contextlib
import sys
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
