"""How `finetune` and `predict` drive a fine-tuning task: a typed record of plain functions per task kind (no base
class), registered in tasks/registry.py. Adding a task = one file with its SPEC + one registry line.

The Protocols say what each function takes and returns. recipes/ and inference/ sit above tasks/, so tasks import
neither: recipes.finetune_config.FinetuneConfig satisfies `TaskArgs` and the inference Engine satisfies
`HiddenStates` structurally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

import torch
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Dataset, LabelType
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.tasks import Task

Rows = Sequence[tuple[Any, Any]]  # (input, label) records: (texts, label), (words, tags), ((question, context), answers)
Meta = dict[str, Any]  # task.json: kind, labels, max_length and what task_json/calibrate added


class FinetuneKnobs(Protocol):
    """The fine-tuning settings tasks read (FinetuneConfig.finetune)."""

    @property
    def max_length(self) -> int: ...
    @property
    def pooling(self) -> Literal["mean", "cls", "pooler"]: ...
    @property
    def max_chunks(self) -> int: ...
    @property
    def stride(self) -> int: ...
    @property
    def chunk_pooling(self) -> Literal["mean", "max"]: ...
    @property
    def class_weight(self) -> Literal["none", "balanced"]: ...


class LoopKnobs(Protocol):
    """The loop settings tasks batch by (FinetuneConfig.train, a TrainArgs)."""

    @property
    def batch_rows(self) -> int: ...
    @property
    def micro_rows(self) -> int: ...
    @property
    def seed(self) -> int: ...


class TaskArgs(Protocol):
    """A fine-tuning run's config as tasks see it (read-only, so FinetuneConfig satisfies it structurally)."""

    @property
    def finetune(self) -> FinetuneKnobs: ...
    @property
    def train(self) -> LoopKnobs: ...


def batching(args: TaskArgs, rank: int, world: int) -> dict[str, Any]:
    """The keyword arguments every task constructor shares: window length, batch split, seed, this process."""
    return {
        "max_length": args.finetune.max_length,
        "batch_rows": args.train.batch_rows,
        "micro_rows": args.train.micro_rows,
        "seed": args.train.seed,
        "rank": rank,
        "world": world,
    }


class FinetuneTask(Task, Protocol):
    """A training-loop Task that can also score whole labelled sets (the final dev and test evaluation)."""

    primary: str  # the dev metric that picks the best checkpoint (the same name as TaskSpec.primary)

    def evaluate(self, model: nn.Module, rows: Rows) -> dict[str, object]: ...


class BuildTask(Protocol):
    def __call__(
        self, tok: Tokenizer, labels: list[str], train: Rows, dev: Rows, args: TaskArgs, *, rank: int = 0, world: int = 1
    ) -> FinetuneTask: ...


class HiddenBatch(Protocol):
    """One batch of HiddenStates.forward_batches."""

    index: list[int]  # (B,) positions in the caller's list of sequences
    hidden: torch.Tensor  # (B, T, C), zeros at padding
    mask: torch.Tensor  # (B, T) bool


class HiddenStates(Protocol):
    """What prediction needs from the inference Engine: its tokenizer and its batched, padding-free forward."""

    tokenizer: Tokenizer

    def forward_batches(self, ids: Sequence[Sequence[int]]) -> Iterator[HiddenBatch]: ...


BuildModel = Callable[[Encoder, list[str], TaskArgs], nn.Module]  # -> a module with `.encoder` and `.head`
BuildHead = Callable[[EncoderConfig, Meta], nn.Module]  # the untrained head of a saved run
Predict = Callable[[HiddenStates, nn.Module, Meta, Sequence[str]], list[dict[str, Any]]]
Calibrate = Callable[[Any, nn.Module, Rows], dict[str, Any]]  # Any: the task object build_task returned


def no_calibration(task: Any, model: nn.Module, rows: Rows) -> dict[str, Any]:
    return {}


def no_check(ds: Dataset) -> None:
    """Every record the readers accept will do."""


@dataclass(frozen=True)
class TaskSpec:
    """The functions fine-tuning and prediction need for one task kind.

    Fields:
        kind: the CLI name ("classify", "multilabel", "ner", "regress", "qa").
        label_type: the readers' label type this task reads.
        primary: the dev metric that picks the best checkpoint; greater_is_better: its direction (False for a
            loss-like metric, which is then minimised).
        build_model(encoder, labels, args) -> nn.Module with `.encoder` and `.head`.
        build_task(tokenizer, labels, train_rows, dev_rows, args, rank=, world=) -> a FinetuneTask.
        task_json(args) -> what prediction needs besides the labels (max_length, pooling, chunking).
        build_head(cfg, meta) -> the untrained head of a saved run; `load_head` loads its weights.
        predict(engine, head, meta, texts) -> one JSON-able dict per input text.
        calibrate(task, model, dev_rows) -> extra task.json fields tuned on dev (e.g. thresholds), {} if none.
        check_examples(dataset) -> None: fail on the first record this task cannot use, naming its file:line (run
            on every data file before the model loads; the readers' own checks come first).
    """

    kind: str
    label_type: LabelType
    primary: str
    build_model: BuildModel
    build_task: BuildTask
    task_json: Callable[[TaskArgs], Meta]
    build_head: BuildHead
    predict: Predict
    calibrate: Calibrate = no_calibration
    greater_is_better: bool = True
    check_examples: Callable[[Dataset], None] = no_check

    def load_head(self, cfg: EncoderConfig, meta: Meta, state: dict[str, torch.Tensor]) -> nn.Module:
        """The head of a saved run with its trained weights, in eval mode (the one head loader of every task)."""
        head = self.build_head(cfg, meta)
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise EncoderforgeError(
                f"the saved {self.kind} head does not fit task.json ({str(e).splitlines()[0]}); "
                "the run directory is inconsistent: fine-tune again"
            ) from None
        return head.eval()

    def labels_from(self, ds: Dataset, *others: Dataset | None) -> list[str]:
        """The label set: sorted names seen in the training file. For tags, every entity type seen in any given
        file as a B-/I- pair after "O" (a cross-validation fold may lack a rare type, and the output space is not
        training data)."""
        if self.label_type in ("float", "span", "pairs"):
            return []  # regression, QA and embedding pairs: no label set
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
        if self.label_type in ("float", "span", "pairs"):
            return
        for ex in ds.examples:
            for lab in ex.label if isinstance(ex.label, list) else [ex.label]:
                if lab not in known:
                    raise EncoderforgeError(
                        f"{ex.where}: label {lab!r} does not occur in the training data (labels: "
                        f"{labels[:20]}); fix the record, or declare all labels with --labels"
                    )
