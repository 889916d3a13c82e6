"""Learning-rate schedules as pure functions of the step (nanoGPT `get_lr` style): resume needs only the step.

linear / cosine: warmup, then decay to min_ratio * peak at the last step (BERT, RoBERTa).
wsd: warmup-stable-decay (the Power Scheduler / MiniCPM schedule): constant, then a linear decay over the
final `decay_fraction` of training, so a run can be extended by restarting from a pre-decay checkpoint.
range: the learning-rate range test's exponential ramp (Smith 2017) from min_ratio * peak at step 0 up to peak at
the last step, no warmup; `--lr auto` (training/lr_find.py) runs it and reads the loss at each step.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["linear", "cosine", "wsd", "constant", "range"]
SCHEDULES = ("linear", "cosine", "wsd", "constant", "range")


def lr_at(
    step: int,
    *,
    peak: float,
    total: int,
    warmup: int = 0,
    schedule: Schedule = "linear",
    min_ratio: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Args:
        step: the step about to be taken.
        peak: the learning rate after warmup.
        total: total optimizer steps of the run.
        warmup: linear warmup steps (step 0 gets peak / warmup, never 0).
        schedule: "linear" | "cosine" | "wsd" | "constant" | "range".
        min_ratio: the final learning rate as a fraction of peak (range: the first).
        decay_fraction: for "wsd", the share of steps spent decaying.
    Returns:
        the learning rate.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "range":
        return peak * min_ratio ** (1 - step / max(1, total - 1))
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * min_ratio
    if schedule == "constant":
        return peak
    if schedule == "wsd":
        decay_start = max(warmup, total - max(1, round(decay_fraction * total)))
        if step < decay_start:
            return peak
        frac = (step - decay_start) / max(1, total - 1 - decay_start)
        return peak - (peak - floor) * min(frac, 1.0)
    frac = min((step - warmup) / max(1, total - 1 - warmup), 1.0)  # 0 right after warmup, 1 at the last step
    if schedule == "linear":
        return peak - (peak - floor) * frac
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))
