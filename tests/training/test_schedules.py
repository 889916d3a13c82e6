"""Learning-rate schedules are pure functions with the documented shape."""

from __future__ import annotations

import math

import pytest

from encoderforge.training.schedules import lr_at


def test_warmup_then_linear_to_floor():
    lrs = [lr_at(s, peak=1.0, total=110, warmup=10, schedule="linear", min_ratio=0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lrs[60] == pytest.approx(1.0 - 0.9 * 50 / 99)


def test_cosine_midpoint_and_end():
    total, warm = 102, 1  # decay spans steps 1..101: step 51 is the midpoint
    mid = lr_at(51, peak=2.0, total=total, warmup=warm, schedule="cosine")
    assert mid == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(101, peak=2.0, total=total, warmup=warm, schedule="cosine") == pytest.approx(0.0, abs=1e-12)


def test_wsd_is_flat_then_decays_in_the_last_fraction():
    lrs = [lr_at(s, peak=1.0, total=100, warmup=5, schedule="wsd", decay_fraction=0.2) for s in range(100)]
    assert all(v == 1.0 for v in lrs[5:80]) and lrs[99] == pytest.approx(0.0)
    assert 0 < lrs[90] < 1


def test_constant_and_unknown():
    assert lr_at(500, peak=3e-4, total=10, schedule="constant") == 3e-4
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, peak=1.0, total=10, schedule="step")  # type: ignore[arg-type]
