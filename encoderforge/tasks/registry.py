"""Fine-tuning task kinds by CLI name."""

from __future__ import annotations

from typing import Literal

from encoderforge.tasks import classification, multilabel, ner, pairs
from encoderforge.tasks.spec import TaskSpec

TaskKind = Literal["classify", "multilabel", "ner", "regress"]

TASKS: dict[str, TaskSpec] = {
    "classify": classification.SPEC,
    "multilabel": multilabel.SPEC,
    "ner": ner.SPEC,
    "regress": pairs.SPEC,
}
