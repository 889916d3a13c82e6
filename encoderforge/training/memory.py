"""Give freed heap memory back to the OS during CPU training.

Why by hand: glibc's allocator keeps freed heap pages for reuse, and when every batch has another shape (packed or
padded variable-length batches) the kept pages pile up: a MiniLM-L6 fine-tuning run whose live memory is ~0.6 GB
peaked at 8.95 GB RSS (benchmarks/finetune_rss.py, docs/results-finetune.md). `malloc_trim(0)` returns them;
doing it after every step costs ~15% step time (pages fault back in), every few dozen steps almost nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """malloc_trim(0): True if glibc returned memory to the OS, False if none or not glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0
