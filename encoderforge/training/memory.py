"""Give freed heap memory back to the OS during CPU training.

Why by hand: glibc's allocator keeps freed heap pages for reuse, and when every batch has another shape (packed or
padded variable-length batches) the kept pages pile up: a MiniLM-L6 fine-tuning run whose live memory is ~0.6 GB
peaked at 8.95 GB RSS (benchmarks/finetune_rss.py, docs/results-finetune.md). `malloc_trim(0)` returns them,
but every trim costs the next steps their page faults: trimming every 5 steps made a MiniLM fine-tuning run 26%
slower (102 vs 81 s, docs/results.md, issue 19). So `HeapTrimmer` trims only when RSS has grown 50% past a step's working
set (its size at the first check): the creep is still capped, a steady run pays almost nothing. A fixed mmap
threshold (`set_mmap_threshold`) holds RSS flat but cost 75% step time here (every activation page-faulted anew).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc, not musl
    except OSError:
        return None


def release_free_heap() -> bool:
    """malloc_trim(0): True if glibc returned memory to the OS, False if none or not glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class HeapTrimmer:
    """Trim the heap when it has grown: checked every `every` optimizer steps (0 = never) and after evaluations. The
    first check only records `floor`, the RSS of a running step's working set; later checks trim when RSS exceeds
    floor x (1 + growth), and raise the floor if a trim cannot get below it (memory that is really live)."""

    def __init__(self, every: int, growth: float):
        self.every, self.growth = every, growth
        self.floor: float | None = None
        self.trims = 0

    def after_step(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and self.check()

    def check(self) -> bool:
        """Trim if RSS exceeds the floor by the margin; True if a trim ran."""
        if not self.every:
            return False
        rss = rss_mb()
        if self.floor is None or rss <= self.floor * (1 + self.growth):
            self.floor = rss if self.floor is None else self.floor
            return False
        release_free_heap()
        self.floor, self.trims = max(self.floor, rss_mb()), self.trims + 1
        return True


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold: blocks above `nbytes` are mmapped and unmapped when freed (the default
    threshold rises by itself up to 32 MB, after which large freed tensors stay in the heap). True if set."""
    libc = _glibc()
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes))) if libc is not None else False


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0
