"""`--lr auto`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks";
fastai's `lr_find`), run by the ONE training loop on the model exactly as fine-tuning will start it.

The loop trains for `steps` optimizer steps while the LR ramps exponentially from LO to HI (the "range"
schedule), logging the training loss at every step; the weights are then put back as they were. The loss curve is
smoothed (an exponential moving average with bias correction) and cut where it diverges (smoothed loss above
DIVERGE x its minimum so far); the chosen peak LR is the LR at the smoothed minimum divided by 10, Smith's "one order
of magnitude below the minimum". A curve without a clear minimum (lowest at its start, or never MIN_DROP below its
first point: typical when LP-FT's probe head already fits) keeps the configured train.lr, and says so in "rule". The data order and dropout come from the seed, so the choice is deterministic for a
seed; the curve, the rule and the choice are written to RUN/lr_find.json (read back on resume, never re-measured).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_file
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import Dist
from encoderforge.training.loop import train as run_loop

LO, HI = 1e-6, 1e-2  # the ramp: wide enough for a frozen-encoder head (high) and a full fine-tune (low)
BETA = 0.8  # smoothing of the per-step loss (few, noisy steps: fastai's 0.98 is for hundreds of steps)
DIVERGE = 4.0  # the curve is cut where the smoothed loss exceeds this multiple of its minimum so far
MIN_DROP = 0.05  # the smoothed minimum must lie this far below the first point to count as a minimum
RULE = "lr at the minimum of the smoothed range-test loss / 10 (Smith 2017)"
KEPT = "no clear minimum in the range test (lowest at its start, or under 5% below it): kept train.lr"


@dataclass
class LrChoice:
    lr: float
    rule: str
    steps: int
    seconds: float
    curve: list[list[float]]  # [lr, loss, smoothed loss] per step up to the cut
    diverged: bool = False  # the curve was cut where the loss blew up (else the ramp ended first)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def range_steps(per_epoch: int) -> int:
    """Steps of the test: half an epoch, at least 30 (10 per decade of the ramp's first three) and at most 100."""
    return max(30, min(100, per_epoch // 2))


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Bias-corrected exponential moving average (Adam's correction: the first values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, x in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta**i))
    return out


def choose(lrs: list[float], losses: list[float]) -> tuple[float | None, list[list[float]]]:
    """The LR the rule picks from a range-test curve (None: the curve has no clear minimum, keep the configured LR),
    and the curve up to where it diverged (or went non-finite)."""
    sm = smooth([x if math.isfinite(x) else float("inf") for x in losses])
    best, cut = 0, len(sm)
    for i, s in enumerate(sm):
        if not math.isfinite(s) or (i > 0 and s > DIVERGE * sm[best]):
            cut = i
            break
        if s < sm[best]:
            best = i
    if cut == 0:
        raise EncoderforgeError(f"--lr auto: the loss was not finite even at lr={lrs[0]:.1e}; check the labels and data")
    curve = [[lr, loss, s] for lr, loss, s in zip(lrs[:cut], losses[:cut], sm[:cut])]
    # no clear minimum: the loss is lowest at the start of the ramp (e.g. a head already fitted by the probe), or
    # never falls by MIN_DROP: a tenth of such a point would be a guess below the ramp, so the configured LR stays
    if best < max(1, cut // 10) or sm[best] > (1 - MIN_DROP) * sm[0]:
        return None, curve
    return lrs[best] / 10, curve


def find_lr(
    model: nn.Module,
    task: Any,
    base: TrainArgs,
    dist: Dist,
    *,
    run_dir: Path,
    steps: int,
    groups: Callable[[], list[dict[str, Any]]],
    tokenizer_dir: str | Path | None = None,
) -> LrChoice:
    """Run the range test (module docstring) and return the chosen peak LR; `model` ends with its start weights.

    Args:
        base: the run's TrainArgs (batch, betas, weight decay, clipping, seed); steps and schedule are replaced.
        run_dir: the fine-tuning run; the test's scratch loop directory is RUN/lr-find (removed after), its result
            RUN/lr_find.json (if present, it is returned as is: a resumed run keeps its choice).
        groups: builds the optimizer's parameter groups (the run's layer-wise decay and head scale).
    """
    record = run_dir / "lr_find.json"
    if record.is_file():
        return LrChoice(**json.loads(record.read_text(encoding="utf-8")))
    if dist.world > 1:  # each rank would run its own test; one rank's choice would need broadcasting: not built
        raise EncoderforgeError("--lr auto runs in one process; find the LR with a single-process run and pass --lr NUMBER")
    scratch = run_dir / "lr-find"
    shutil.rmtree(scratch, ignore_errors=True)  # a test killed mid-way starts over (it is short)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = dataclasses.replace(
        base,
        steps=steps,
        lr=HI,
        min_lr_ratio=LO / HI,
        schedule="range",
        warmup_steps=0,
        log_every=1,
        eval_every=0,
        save_every=0,
        keep_checkpoints=1,
        out_dir=str(scratch),
        resume=False,
        progress=False,
    )
    t0 = time.perf_counter()
    try:
        run_loop(model, task, args, dist, tokenizer_dir=tokenizer_dir, param_groups=groups())
        logged = [json.loads(x) for x in (scratch / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    finally:
        model.load_state_dict(start)
        shutil.rmtree(scratch, ignore_errors=True)
    points = [(r["lr"], r["loss"]) for r in logged if "loss" in r]
    lr, curve = choose([p[0] for p in points], [p[1] for p in points])
    rule, diverged = (RULE if lr is not None else KEPT), len(curve) < len(points)
    choice = LrChoice(lr=lr or base.lr, rule=rule, steps=steps, seconds=round(time.perf_counter() - t0, 1), curve=curve,
                      diverged=diverged)  # fmt: skip
    if dist.main:
        with atomic_file(record) as f:
            json.dump(choice.as_dict(), f, indent=2)
    return choice
