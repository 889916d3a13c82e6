"""Early stopping on a dev metric, and the best weights kept for the end of the run (the loop's `on_eval` hook).

The keeper's state (best weights, best value and step, patience count) is saved in every training checkpoint and
restored on resume, so a run killed after its best evaluation still ends with those weights.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from encoderforge import EncoderforgeError


class BestKeeper:
    """Remembers the weights of the best dev evaluation and asks for an early stop after `patience` evaluations
    without improvement (0 = never). `greater_is_better=False` for metrics to minimise (a loss, an error rate)."""

    def __init__(
        self,
        model: torch.nn.Module,
        metric: str,
        patience: int = 0,
        *,
        greater_is_better: bool = True,
        report: Callable[[int, float], None] | None = None,
    ):
        """`report(step, value)` sees every evaluation's metric after the keeper's own update (e.g. a search's
        pruner: it may raise to end the run there)."""
        self.model, self.metric, self.patience, self.greater = model, metric, patience, greater_is_better
        self.report = report
        self.best: float | None = None
        self.best_step = self.last_step = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.bad, self.stopped = 0, False

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        self.last_step = step
        value = metrics.get(self.metric)
        if value is None:
            raise EncoderforgeError(f"dev metrics have no {self.metric!r} (got {sorted(metrics)}); is the dev set empty?")
        better = self.best is None or (value > self.best if self.greater else value < self.best)
        if better:
            self.best, self.best_step, self.bad = value, step, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.bad += 1
        self.stopped = bool(self.patience and self.bad >= self.patience)
        if self.report is not None:
            self.report(step, float(value))
        return self.stopped

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)

    def state_dict(self) -> dict[str, Any]:
        """Tensors under "weights" (the best state), plain values under "meta": what a checkpoint stores."""
        return {
            "weights": dict(self.state or {}),
            "meta": {
                "best": self.best,
                "best_step": self.best_step,
                "last_step": self.last_step,
                "bad": self.bad,
                "stopped": self.stopped,
                "has_state": self.state is not None,
            },
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        meta = sd["meta"]
        self.best, self.best_step, self.last_step = meta["best"], meta["best_step"], meta["last_step"]
        self.bad, self.stopped = meta["bad"], meta["stopped"]
        self.state = dict(sd["weights"]) if meta["has_state"] else None
