"""The loop's contract with a task: what a task supplies (batches, a summed loss, metrics). Tasks (WHAT to learn,
encoderforge.tasks) implement it; the loop (HOW to learn) depends only on this file, never on a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

import torch
from torch import nn


@dataclass
class LossSum:
    """A loss *summed* over `count` units (masked tokens, examples), so the loop can normalise by the count over
    all micro-batches and processes: gradient accumulation and DDP then give exactly the single-batch gradient."""

    total: torch.Tensor  # () scalar, summed over units
    count: int  # units in the sum
    tokens: int = 0  # input tokens processed (for tokens/s)
    stats: dict[str, float] = field(default_factory=dict)  # other sums over the same units, e.g. {"correct": 93}


class Task(Protocol):
    def train_batches(self, start_step: int) -> Iterator[list[Any]]:
        """From optimizer step `start_step` on: for each step, this process's micro-batches (resume-exact)."""
        ...

    def eval_batches(self) -> Iterable[Any]:
        """This process's share of the fixed held-out batches."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> LossSum:
        """Run `model` (possibly DDP-wrapped: call it, not its submodules) on a batch on the model's device."""
        ...

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed eval stats ({"loss", "count", *stats}) into named metrics."""
        ...
