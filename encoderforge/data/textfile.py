"""Reading text files for the data readers: strict UTF-8 with the line of the first bad byte, and JSONL records with
the line of each. Shared by readers.py and qa_reader.py (a module below both, so neither imports the other back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from encoderforge import EncoderforgeError


def decode_utf8(path: Path) -> str:
    """The file's text (a UTF-8 BOM dropped); bytes that are not UTF-8 -> one-line error naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EncoderforgeError(
            f"{path}:{line}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def json_object(raw: str, where: str, fix: str = "write one JSON object per line") -> dict:
    """One JSONL line -> its object; not JSON or not an object -> one-line error naming `where` (file:line) and `fix`."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise EncoderforgeError(f"{where}: not valid JSON ({e.msg}); {fix}") from None
    if not isinstance(obj, dict):
        raise EncoderforgeError(f"{where}: a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


def jsonl_rows(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not one JSON object -> one-line error."""
    for line, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            yield line, json_object(raw, f"{path}:{line}", "each line must be one JSON object")
