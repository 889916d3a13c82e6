"""Freed heap memory goes back to the OS (glibc keeps fragmented free chunks until malloc_trim)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# in a fresh interpreter: the heap's state (what earlier tests freed or trimmed) decides what a trim can return
SCRIPT = """
import json, torch
from encoderforge.training.memory import release_free_heap, rss_mb
big, pins = [], []
for _ in range(2000):
    big.append(torch.ones(25_000))  # 100 KB each: below glibc's mmap threshold, so from the heap
    pins.append(torch.ones(16))     # a live block after each keeps the heap from shrinking at its top
del big
before = rss_mb()
released = release_free_heap()
print(json.dumps({"before": before, "after": rss_mb(), "released": released}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_free_heap_returns_fragmented_free_memory():
    out = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout)
    assert out["released"] is True
    assert out["before"] - out["after"] > 100  # ~190 MB of freed blocks were still resident before the trim


# a trim costs the next steps their page faults (26% of a fine-tuning run's time when done every 5 steps,
# docs/results.md, issue 19): the loop trims only when the heap has grown past a step's working set by a margin
TRIMMER = """
import json, torch
from encoderforge.training.memory import HeapTrimmer, rss_mb
t = HeapTrimmer(every=5, growth=0.5)
first = t.after_step(5)            # the first check records the floor (a step's working set), no trim
quiet = [t.after_step(s) for s in range(6, 16)]   # nothing grew: no trim, and off-steps are not even checked
floor = t.floor
big, pins = [], []
for _ in range(4000):
    big.append(torch.ones(25_000))  # ~400 MB from the heap, kept resident after the del below
    pins.append(torch.ones(16))
del big
grown = rss_mb()
trimmed = t.after_step(20)
print(json.dumps({"first": first, "quiet": quiet, "floor": floor, "grown": grown, "trimmed": trimmed,
                  "after": rss_mb(), "trims": t.trims}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_heap_trimmed_only_when_it_grew_past_the_margin():
    out = json.loads(subprocess.run([sys.executable, "-c", TRIMMER], capture_output=True, text=True, check=True).stdout)
    assert out["first"] is False and out["quiet"] == [False] * 10
    assert out["grown"] > 1.5 * out["floor"] and out["trimmed"] is True and out["trims"] == 1
    assert out["grown"] - out["after"] > 200  # the freed ~400 MB went back to the OS


def test_loop_trims_on_cpu_by_default():
    from encoderforge.training.args import TrainArgs

    assert TrainArgs().trim_heap_every == 5 and TrainArgs().trim_heap_growth == 0.5
    with pytest.raises(Exception, match="trim_heap_every"):
        TrainArgs(trim_heap_every=-1)
    with pytest.raises(Exception, match="trim_heap_growth"):
        TrainArgs(trim_heap_growth=-0.1)
