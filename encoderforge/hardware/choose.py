"""Pick the fastest correct kernel on this machine: time every candidate on the model's own shapes (interleaved
rounds, medians), drop those that fail a numerical check against a float64 reference, cache the winner per CPU +
library versions + thread count (`cache.py`). An environment variable can force a candidate; a forced one that
fails its check falls back to the measured choice with a message.

Why by hand: which GEMM path wins is a property of the CPU (oneDNN beat MKL 2.3x on the AVX-512 EPYC, lost on the
AVX2 EPYC and on the AMX Xeon; docs/results.md), so no fixed rule holds; the chooser is ~100 lines, no library does it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch

from encoderforge.hardware.cache import measuring_lock, read_choices, write_choice

log = logging.getLogger(__name__)

_REMEASURE = contextvars.ContextVar("remeasure", default=False)

Candidate = Callable[[], torch.Tensor]  # runs the kernel once on fixed inputs; returns what the check compares


@dataclass
class Choice:
    task: str  # cache key: what was chosen for which shapes and thread count
    picked: str
    source: str  # "measured" | "cache" | "forced" | "fallback" (a forced candidate failed its check)
    ms: dict[str, float] = field(default_factory=dict)  # median milliseconds per candidate that passed
    errors: dict[str, float] = field(default_factory=dict)  # relative error to the reference, per candidate
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not eligible
    note: str = ""


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double().flatten(), ref.double().flatten()
    if y.shape != ref.shape or not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).norm() / ref.norm().clamp(min=1e-30))


def _check(candidates: dict[str, Candidate], reference: torch.Tensor, tol: float) -> tuple[dict[str, float], dict[str, str]]:
    errors, rejected = {}, {}
    for name, fn in candidates.items():
        try:
            errors[name] = rel_error(fn(), reference)
        except (RuntimeError, NotImplementedError) as e:  # a kernel missing from this build
            rejected[name] = f"failed to run: {str(e).splitlines()[0][:120]}"
            continue
        if not errors[name] <= tol:
            rejected[name] = f"relative error {errors[name]:.2e} > {tol:.0e}"
    return errors, rejected


def time_candidates(candidates: dict[str, Candidate], *, rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per candidate over `rounds` interleaved rounds (each round runs every candidate once,
    in rotated order, so a slow spell of the machine hits all of them)."""
    names = list(candidates)
    for _ in range(warmup):
        for n in names:
            candidates[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            candidates[n]()
            times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def choose(
    task: str,
    candidates: dict[str, Candidate],
    *,
    reference: torch.Tensor | Callable[[], torch.Tensor],
    tol: float,
    forced: str | None = None,
    forced_by: str = "",
    rounds: int = 7,
    use_cache: bool = True,
    prefer: str | None = None,
    tie: float = 0.03,
    timers: dict[str, Candidate] | None = None,
) -> Choice:
    """The fastest candidate that passes `rel_error(out, reference) <= tol`, from the cache when this machine has
    measured `task` before (`reference` may be a callable, run only when something is checked). `forced` (the name of a candidate, e.g. from an environment variable `forced_by`) is
    used if it passes the check; else the measured choice is used and `Choice.note` says why. `prefer`: the candidate
    kept when it is within `tie` (relative) of the fastest: a near-tie in a micro-benchmark is noise, and then a
    known-good default (e.g. the instruction-set rule it replaces) beats a coin flip. `timers` (one per candidate):
    what the clock runs instead of the candidate itself, e.g. a whole training step with that kernel, when the
    isolated kernel ranks differently from the work it serves; the check still runs the candidates."""
    task = f"{task}@{torch.get_num_threads()}t"
    if timers is not None and set(timers) != set(candidates):
        raise ValueError(f"timers for {sorted(timers)} but candidates {sorted(candidates)} ({task})")
    if forced is not None and forced not in candidates:
        raise ValueError(f"unknown candidate {forced!r} for {task}; known: {', '.join(candidates)}")
    if forced is not None:
        errors, rejected = _check({forced: candidates[forced]}, _value(reference), tol)
        if forced not in rejected:
            return Choice(task, forced, "forced", errors=errors)
        note = f"{forced_by or 'forced'}={forced} failed its numerical check ({rejected[forced]}); using the measured choice"
        log.warning("%s: %s", task, note)
        others = {k: v for k, v in candidates.items() if k != forced}
        measured = choose(
            task.rsplit("@", 1)[0],
            others,
            reference=reference,
            tol=tol,
            rounds=rounds,
            use_cache=False,
            prefer=prefer,
            timers=None if timers is None else {k: v for k, v in timers.items() if k != forced},
        )
        measured.rejected.update(rejected)
        measured.source, measured.note = "fallback", note
        return measured
    if not use_cache:
        return _measure(task, candidates, _value(reference), tol, rounds, prefer, tie, timers)
    fresh = _REMEASURE.get()
    hit = None if fresh else _cached(task, candidates)
    if hit is not None:
        return hit
    with measuring_lock():
        hit = None if fresh else _cached(task, candidates)  # another process measured while we waited
        if hit is not None:
            return hit
        choice = _measure(task, candidates, _value(reference), tol, rounds, prefer, tie, timers)
        write_choice(task, {k: v for k, v in asdict(choice).items() if k not in ("task", "source")})
    return choice


@contextlib.contextmanager
def remeasure() -> Iterator[None]:
    """Inside this block `choose` ignores cached choices and measures again (then caches the new result): what
    `encoderforge doctor --measure` does, e.g. when a choice was cached while the machine was busy."""
    token = _REMEASURE.set(True)
    try:
        yield
    finally:
        _REMEASURE.reset(token)


def _value(reference: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
    return reference() if callable(reference) else reference


def _cached(task: str, candidates: dict[str, Candidate]) -> Choice | None:
    hit = read_choices().get(task)
    if isinstance(hit, dict) and hit.get("picked") in candidates:
        return Choice(**{**hit, "task": task, "source": "cache"})
    return None


def _measure(
    task: str,
    candidates: dict[str, Candidate],
    reference: torch.Tensor,
    tol: float,
    rounds: int,
    prefer: str | None,
    tie: float,
    timers: dict[str, Candidate] | None = None,
) -> Choice:
    errors, rejected = _check(candidates, reference, tol)
    ok = {k: (timers or candidates)[k] for k in candidates if k not in rejected}
    if not ok:
        raise RuntimeError(f"{task}: no candidate passed its numerical check: {rejected}")
    ms = time_candidates(ok, rounds=rounds) if len(ok) > 1 else {}
    picked = min(ms, key=ms.__getitem__) if ms else next(iter(ok))
    note = ""
    if prefer in ms and picked != prefer and ms[prefer] <= ms[picked] * (1 + tie):
        picked, note = prefer, f"within {tie:.0%} of the fastest: kept the default {prefer}"
    return Choice(task, picked, "measured", ms=ms, errors=errors, rejected=rejected, note=note)
