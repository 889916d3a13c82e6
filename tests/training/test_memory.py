"""Freed heap memory goes back to the OS (glibc keeps fragmented free chunks until malloc_trim)."""

from __future__ import annotations

import sys

import pytest
import torch

from encoderforge.training.memory import release_free_heap, rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_free_heap_returns_fragmented_free_memory():
    big, pins = [], []
    for _ in range(2000):
        big.append(torch.ones(25_000))  # 100 KB each: below glibc's mmap threshold, so from the heap
        pins.append(torch.ones(16))     # a live block after each keeps the heap from shrinking at its top
    del big
    before = rss_mb()
    assert release_free_heap() is True
    assert before - rss_mb() > 100  # ~190 MB of freed blocks were still resident before the trim
    del pins


def test_loop_trims_on_cpu_by_default():
    from encoderforge.training.args import TrainArgs

    assert TrainArgs().trim_heap_every == 20
    with pytest.raises(Exception, match="trim_heap_every"):
        TrainArgs(trim_heap_every=-1)
