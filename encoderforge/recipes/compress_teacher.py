"""A fine-tuned run read back for compression: its config, task, labels and data splits (the same ones it was
trained, selected and tested on), and its model as a trainable task model again.

Compression must not change the question: the student trains on the teacher's training split, is selected on the
teacher's dev split (re-derived with the run's own seed when dev was held out of train) and scored on its test.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.config import from_dict
from encoderforge.data.readers import Dataset, split_dev
from encoderforge.fileio import atomic_file, file_digest
from encoderforge.model import checkpoint
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.finetune import load_split, rows, schema_of
from encoderforge.recipes.finetune_config import FinetuneConfig
from encoderforge.tasks.registry import TASKS
from encoderforge.tasks.spec import TaskSpec
from encoderforge.tokenization import load_tokenizer

COMPRESSIBLE = ("classify", "multilabel")  # pooled tasks scored on labels; NER, QA and embeddings are not yet


@dataclass
class TeacherRun:
    run: Path
    cfg: FinetuneConfig
    spec: TaskSpec
    meta: dict[str, Any]  # task.json
    labels: list[str]
    train: Dataset
    dev: Dataset
    test: Dataset | None

    @property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.run / "model")

    def net(self, run: Path | None = None) -> nn.Module:
        """The task model (encoder + head) of `run` (default: the teacher), in training form."""
        loaded = checkpoint.load((run or self.run) / "model")
        net = self.spec.build_model(loaded.encoder, self.labels, self.cfg)
        head = {k[len("head.") :]: v for k, v in loaded.extra.items() if k.startswith("head.")}
        net.head.load_state_dict(head)  # type: ignore[union-attr, operator]  # every task model has .head
        return net

    def job(self, cfg: FinetuneConfig | None = None) -> Any:
        """The fine-tuning task object (batches, loss, evaluate) over the teacher's train and dev splits."""
        return self.spec.build_task(
            self.tokenizer, self.labels, rows(self.train), rows(self.dev), cfg or self.cfg, rank=0, world=1
        )

    def with_training(
        self, *, epochs: float, lr: float, warmup_ratio: float, evals_per_epoch: int, out_dir: Path
    ) -> FinetuneConfig:
        """The teacher's config with a compression step's own schedule (no probe: the head is already trained)."""
        ft = dataclasses.replace(
            self.cfg.finetune,
            epochs=max(epochs, 1e-6),
            warmup_ratio=warmup_ratio,
            evals_per_epoch=evals_per_epoch,
            probe=False,
            head_init="random",
            lr_auto=False,
            patience=0,
        )
        return dataclasses.replace(self.cfg, finetune=ft, train=dataclasses.replace(self.cfg.train, lr=lr, out_dir=str(out_dir)))


def load_teacher(run_dir: str | Path) -> TeacherRun:
    """Read a finished `encoderforge finetune` run; every missing piece is a one-line error naming the file."""
    run = Path(run_dir)
    for name in ("task.json", "config.json", "model/config.json"):
        if not (run / name).is_file():
            raise EncoderforgeError(
                f"{run / name}: missing; the teacher must be a finished `encoderforge finetune` run directory"
            )
    meta = json.loads((run / "task.json").read_text(encoding="utf-8"))
    record = json.loads((run / "config.json").read_text(encoding="utf-8"))
    if meta.get("kind") not in COMPRESSIBLE:
        raise EncoderforgeError(
            f"{run / 'task.json'}: task {meta.get('kind')!r} cannot be compressed yet; compression supports {list(COMPRESSIBLE)}"
        )
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    cfg = from_dict(FinetuneConfig, {k: v for k, v in record.items() if k in known}, where=str(run / "config.json"))
    files = record.get("train_files") or {}
    digests = (record.get("inputs") or {}).get("files") or {}
    for split, path in files.items():
        if path and not Path(path).is_file():
            raise EncoderforgeError(
                f"{run / 'config.json'}: train_files.{split} {path!r} is not there (relative paths are from where "
                "fine-tuning ran); run compress from that directory or restore the file"
            )
        if path in digests and digests[path] != file_digest(path):
            raise EncoderforgeError(
                f"{path}: changed since {run} was fine-tuned, so its train/dev split would differ; restore the file "
                "or fine-tune again"
            )
    schema = schema_of(cfg)
    train = load_split(files.get("train"), schema, "train")
    if train is None:
        raise EncoderforgeError(f"{run / 'config.json'}: records no training file (train_files.train); re-run the fine-tuning")
    if files.get("dev") in (None, files.get("train")):  # dev was held out of train with the run's seed
        train, dev = split_dev(train, cfg.data.dev_fraction, cfg.train.seed)
    else:
        dev = cast(Dataset, load_split(files["dev"], schema, "dev"))  # a given path always yields a Dataset
    test = load_split(files.get("test"), schema, "test")
    torch.manual_seed(cfg.train.seed)
    return TeacherRun(run, cfg, TASKS[cfg.task], meta, list(meta["labels"]), train, dev, test)  # type: ignore[arg-type]


def student_encoder(net: nn.Module) -> Encoder:
    return net.encoder  # type: ignore[return-value]  # every task model is encoder + head


def save_step_model(t: TeacherRun, net: nn.Module, d: Path) -> None:
    """model/ (encoder + head.*) and task.json: the step directory loads like a fine-tuned run (Predictor.load)."""
    head = {f"head.{k}": v for k, v in cast(nn.Module, net.head).state_dict().items()}
    checkpoint.save(student_encoder(net), d / "model", tokenizer_dir=t.run / "model", extra=head)
    meta = {**t.meta, **t.spec.calibrate(t.job(), net, rows(t.dev))}  # multi-label thresholds re-tuned for this model
    with atomic_file(d / "task.json") as f:
        json.dump(meta, f, indent=2)
