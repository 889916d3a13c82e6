"""Pretraining objectives by name: how each builds its model (around a fresh encoder, or continued from a checkpoint)
and its training-loop Task over the rows and masks of MLM (tasks/masked.py). recipes/pretrain.py looks the objective
up here instead of branching on its name; adding one = its file + one OBJECTIVES line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from encoderforge.model.encoder import Encoder
from encoderforge.tasks import Task
from encoderforge.tasks.anchor import AnchoredMLMTask
from encoderforge.tasks.electra import Electra, ElectraTask
from encoderforge.tasks.masked import MLMTask
from encoderforge.tasks.mlm import MaskedLM


@dataclass(frozen=True)
class ObjectiveArgs:
    """The settings objectives read (recipes/pretrain.py fills them from its `electra` and `model` sections).

    Args:
        generator_width / generator_depth: ELECTRA's generator size as fractions of the discriminator's.
        disc_weight: ELECTRA's lambda on the discriminator loss.
        anchor_weight: anchored MLM's weight on the cosine pull towards the start encoder.
    """

    generator_width: float = 0.25
    generator_depth: float = 1.0
    disc_weight: float = 50.0
    anchor_weight: float = 0.0


PretrainModel = MaskedLM | Electra  # what objectives build; `.encoder` is what a run keeps
StartEncoder = Callable[[Encoder], Encoder]  # the model's encoder -> a frozen copy of it (anchored MLM's reference)


@dataclass(frozen=True)
class Objective:
    """One pretraining objective.

    Fields:
        fresh(encoder, args) -> the model around a new encoder; its `.encoder` is what the run keeps.
        continued(path, args) -> the model around a checkpoint's encoder, reusing the heads saved with it.
        task(data, model, args, start) -> the loop Task. `data` is the MLM task that fixes rows, masks and the
            batch split; `start(model.encoder)` makes the frozen start copy (only anchored MLM calls it).
    """

    fresh: Callable[[Encoder, ObjectiveArgs], PretrainModel]
    continued: Callable[[str | Path, ObjectiveArgs], PretrainModel]
    task: Callable[[MLMTask, PretrainModel, ObjectiveArgs, StartEncoder], Task]


def _mlm(encoder: Encoder, args: ObjectiveArgs) -> MaskedLM:
    return MaskedLM(encoder)


def _mlm_continued(path: str | Path, args: ObjectiveArgs) -> MaskedLM:
    return MaskedLM.from_checkpoint(path)


def _anchored(data: MLMTask, model: PretrainModel, args: ObjectiveArgs, start: StartEncoder) -> AnchoredMLMTask:
    return AnchoredMLMTask(data, start(model.encoder), weight=args.anchor_weight)


OBJECTIVES: dict[str, Objective] = {
    "mlm": Objective(fresh=_mlm, continued=_mlm_continued, task=lambda data, model, args, start: data),
    "electra": Objective(
        fresh=lambda enc, a: Electra(enc, width=a.generator_width, depth=a.generator_depth),
        continued=lambda path, a: Electra.from_checkpoint(path, width=a.generator_width, depth=a.generator_depth),
        task=lambda data, model, a, start: ElectraTask(data, disc_weight=a.disc_weight),
    ),
    "anchored_mlm": Objective(fresh=_mlm, continued=_mlm_continued, task=_anchored),
}
