"""Fine-tuning task kinds by CLI name."""

from __future__ import annotations

from typing import Literal

from encoderforge.tasks import classification, colbert, embed, multilabel, ner, pairs, qa, rerank
from encoderforge.tasks.spec import TaskSpec

TaskKind = Literal["classify", "multilabel", "ner", "regress", "qa", "embed", "colbert", "rerank"]

TASKS: dict[str, TaskSpec] = {
    "classify": classification.SPEC,
    "multilabel": multilabel.SPEC,
    "ner": ner.SPEC,
    "regress": pairs.SPEC,
    "qa": qa.SPEC,
    "embed": embed.SPEC,
    "colbert": colbert.SPEC,
    "rerank": rerank.SPEC,
}
