"""How `finetune` and `predict` drive a fine-tuning task: a record of plain functions per task kind (no base
class), registered in tasks/registry.py. Adding a task = one file with its SPEC + one registry line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Dataset


@dataclass(frozen=True)
class TaskSpec:
    """The functions fine-tuning and prediction need for one task kind.

    Fields:
        kind: the CLI name ("classify", "multilabel", "ner").
        label_type: the readers' label type this task reads ("class", "multilabel", "tags").
        build_model(encoder, labels, args) -> nn.Module with `.encoder` and `.head`.
        build_task(tokenizer, labels, train_rows, dev_rows, args, rank=, world=) -> a training-loop Task that also
            has `primary` (the dev metric to maximise) and `evaluate(model, rows) -> dict`.
        calibrate(task, model, dev_rows) -> extra task.json fields tuned on dev (e.g. thresholds), {} if none.
        task_json(args) -> what prediction needs besides the labels (max_length, pooling, chunking).
        load_head(cfg, meta, head_state) -> the head module, weights loaded.
        predict(engine, head, meta, texts) -> one JSON-able dict per input text.
    """

    kind: str
    label_type: str
    build_model: Callable[..., Any]
    build_task: Callable[..., Any]
    calibrate: Callable[..., dict]
    task_json: Callable[..., dict]
    load_head: Callable[..., Any]
    predict: Callable[..., list[dict]]

    def labels_from(self, ds: Dataset, *others: Dataset | None) -> list[str]:
        """The label set: sorted names seen in the training file. For tags, every entity type seen in any given
        file as a B-/I- pair after "O" (a cross-validation fold may lack a rare type, and the output space is not
        training data)."""
        if self.label_type in ("float", "span"):
            return []  # regression and QA: no label set
        labels = ds.label_set()
        if self.label_type == "tags":
            seen = set(labels).union(*(o.label_set() for o in others if o is not None))
            types = sorted({t[2:] for t in seen if t != "O" and len(t) > 2})
            extra = sorted(t for t in seen if t != "O" and not (len(t) > 2 and t[:2] in ("B-", "I-")))
            return ["O", *extra, *[f"{p}-{t}" for t in types for p in "BI"]]  # `extra` (non-BIO) fails check_bio
        if self.label_type == "class" and len(labels) < 2:
            raise EncoderforgeError(f"{ds.path}: only {len(labels)} label(s) {labels}; classification needs at least two")
        return labels

    def check_labels(self, ds: Dataset, labels: list[str]) -> None:
        """Every label of a dev/test file must be one the model was trained on; name the first offending record."""
        known = set(labels)
        if self.label_type in ("float", "span"):
            return
        for ex in ds.examples:
            for lab in ex.label if isinstance(ex.label, list) else [ex.label]:
                if lab not in known:
                    raise EncoderforgeError(f"{ex.where}: label {lab!r} does not occur in the training data (labels: "
                                            f"{labels[:20]}); fix the record, or declare all labels with --labels")
