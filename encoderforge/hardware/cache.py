"""The per-machine cache of measured kernel choices: one small JSON file in the user's cache dir, keyed by the
CPU and the library versions (a new CPU, torch or oneDNN re-measures), written atomically.

File: $ENCODERFORGE_CACHE_DIR/kernels.json, else $XDG_CACHE_HOME/encoderforge/kernels.json, else
~/.cache/encoderforge/kernels.json. `encoderforge doctor` prints it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

from encoderforge.fileio import atomic_file
from encoderforge.hardware.cpu import cpu_info

CACHE_ENV = "ENCODERFORGE_CACHE_DIR"
FILE_NAME = "kernels.json"


def cache_path() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "encoderforge"
    )
    return Path(base) / FILE_NAME


@functools.lru_cache(maxsize=1)
def _onednn_version() -> str:
    import torch

    m = re.search(r"(?:oneDNN|MKL-DNN) v([\w.]+)", torch.__config__.show())
    return m.group(1) if m else "?"


def machine_key() -> dict[str, Any]:
    """What a measured choice depends on besides the thread count: the CPU and the kernel libraries."""
    import torch

    info = cpu_info()
    key: dict[str, Any] = {"cpu": info.model, "flags": list(info.flags), "torch": torch.__version__, "onednn": _onednn_version()}
    try:
        key["onnxruntime"] = version("onnxruntime")
    except PackageNotFoundError:
        key["onnxruntime"] = None
    return key


def read_choices(path: Path | None = None) -> dict[str, Any]:
    """The cached choices for THIS machine; {} when the file is missing, unreadable, or from another CPU/versions."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("machine") != machine_key() or not isinstance(data.get("choices"), dict):
        return {}
    return data["choices"]


def write_choice(name: str, record: dict[str, Any], path: Path | None = None) -> None:
    """Add or replace one choice; the whole file is rewritten atomically (a killed write leaves the old file).
    Entries of another machine key are dropped. A cache dir that cannot be written is not an error: the choice is
    simply measured again next time."""
    path = path or cache_path()
    choices = {**read_choices(path), name: record}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            json.dump({"machine": machine_key(), "choices": choices}, f, indent=1, sort_keys=True)
    except OSError:
        pass


@contextlib.contextmanager
def measuring_lock() -> Iterator[None]:
    """Hold the cache's lock file while measuring: concurrent processes on one machine (DDP ranks, search trials)
    then measure one at a time (timings not disturbed by each other) and the later ones find the first's choice,
    so every process of a run takes the same path. No lock where the cache dir cannot be written or on non-POSIX."""
    try:
        import fcntl

        path = cache_path().with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
