"""The fine-tuning recipe's typed config: files, fine-tuning knobs and the loop's TrainArgs, one name per concept.

    task: classify                 # classify | multilabel | ner | regress | qa | embed
    model: minilm-l6               # checkpoint directory (ours or HF BERT) or zoo name
    data: {train: train.csv, dev: dev.csv, test: test.csv, text_field: [text], label_field: label}
    finetune: {epochs: 3, max_length: 128, pooling: mean, patience: 0}
    train: {batch_rows: 32, lr: 5e-5, seed: 0, out_dir: runs/clf, save_every: 100}

`train` is the loop's own TrainArgs (the same section pretraining uses); fine-tuning derives its `steps`,
`warmup_steps`, `eval_every` and `log_every` from `finetune.epochs`, `warmup_ratio` and `evals_per_epoch`, so
setting those four in a fine-tuning config is an error that says which field to set instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from encoderforge import EncoderforgeError
from encoderforge.config import load_config, merge, read_yaml
from encoderforge.training.args import TrainArgs

TaskKind = Literal["classify", "multilabel", "ner", "regress", "qa", "embed", "colbert", "rerank"]
DERIVED = {
    "steps": "finetune.epochs",
    "warmup_steps": "finetune.warmup_ratio",
    "eval_every": "finetune.evals_per_epoch",
    "log_every": "finetune.evals_per_epoch",
}
# BERT's fine-tuning AdamW (Devlin et al. 2019) where the loop's defaults are RoBERTa pretraining's
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_rows": 32,
    "lr": 5e-5,
    "beta2": 0.999,
    "eps": 1e-8,
    "warmup_steps": 0,
    "save_every": 100,
    "keep_checkpoints": 1,
    "out_dir": "",
}
# Peak LR per task kind, measured (docs/results.md, issue 15, twelfth session): with LP-FT's head start at batch 32,
# BERT's 5e-5 under-trained every task tried; 1e-4 gained on VADER (3 folds), license category and multi-label,
# token tagging wanted 2e-4 (WNUT-16, 2 folds; the search's best was 2.5e-4). The other kinds keep 5e-5 (not measured).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"train": {"lr": 1e-4}},
    "multilabel": {"train": {"lr": 1e-4}},
    "ner": {"train": {"lr": 2e-4}},
    "qa": {"finetune": {"max_length": 256}, "data": {"text_field": ["question", "context"], "label_field": "answers"}},
    # documents (license texts, articles) are long and packing makes short queries cost only their own tokens
    "embed": {"finetune": {"max_length": 256}},
}
LABEL_TYPES = {
    "classify": "class",
    "multilabel": "multilabel",
    "ner": "tags",
    "regress": "float",
    "qa": "span",
    "embed": "pairs",
    "colbert": "pairs",
    "rerank": "pairs",
}


@dataclass
class FinetuneData:
    """The labelled files and how to read them.

    Args:
        train: training file: .csv, .tsv, .jsonl, .tab (Orange) or CoNLL.
        dev: dev file (best checkpoint, early stopping); default: a held-out share of train.
        test: test file, scored once with the best checkpoint.
        text_field: text column(s); two for sentence pairs (QA reads question and context).
        label_field: column/field with the label.
        labels: allowed labels (unknown ones are errors); default: the labels seen in train.
        label_sep: separator of multi-label cells in CSV/TSV/.tab files.
        dev_fraction: held-out share of train when no dev file is given.
    """

    train: str = ""
    dev: str | None = None
    test: str | None = None
    text_field: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    labels: list[str] | None = None
    label_sep: str = "|"
    dev_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.dev_fraction < 1:
            raise EncoderforgeError(f"--dev-fraction (data.dev_fraction) must be in (0, 1), got {self.dev_fraction}")
        if not self.text_field:
            raise EncoderforgeError("--text-field (data.text_field) needs at least one column name")


@dataclass
class FinetuneArgs:
    """What fine-tuning adds to the loop's TrainArgs.

    Args:
        max_length: tokens per window including [CLS]/[SEP].
        epochs: passes over the training set (fractions allowed).
        warmup_ratio: share of the steps spent warming the LR up linearly (then linear decay to 0).
        lr_decay: layer-wise LR decay factor per layer below the head (1 = off; 0.8-0.95 typical).
        freeze_layers: freeze the embeddings and this many lowest layers (0 = none).
        reinit_layers: re-initialise this many top layers before training.
        lora_rank: train LoRA adapters of this rank on the frozen encoder, merged before saving (0 = off).
        lora_alpha: LoRA scale numerator (the update is scaled by alpha / rank).
        patience: stop after this many evaluations without dev improvement (0 = never stop early).
        evals_per_epoch: dev evaluations per epoch (the best one is kept).
        pooling: how a window becomes a vector: mean (sentence-transformers models), cls, or pooler ([CLS] through
            BERT's dense + tanh, trainable, from the checkpoint: `BertForSequenceClassification`'s head).
        max_chunks: windows per long document (1 = plain truncation).
        stride: overlap of consecutive windows in tokens (QA: the doc stride).
        chunk_pooling: pool the windows' logits by mean or max.
        class_weight: none or balanced (inverse class frequency) loss weights, single-label classification.
        threads: torch intra-op threads (0 = torch's default).
        probe: classify / multilabel / ner: also fit logistic regression on the frozen start encoder's features (pooled;
            NER: each word's first piece) and report its dev/test scores in metrics.json ("probe"): the honest floor
            the fine-tuned score must beat.
        head_init: auto (= probe for classify, multilabel and ner, random for the other tasks), random, or probe = LP-FT:
            start fine-tuning from the probe's head (Kumar et al. 2022); measured on classification tasks in
            docs/results.md ("Defaults").
        head_lr_scale: the head's learning rate as a multiple of train.lr (the encoder keeps train.lr).
        probe_c: the probe's inverse regularisation strength C (0 = the best of 0.1, 1, 10, 100 on dev: with dev
            = the training file that is the least regularised, so fix C there).
        lr_auto: pick the peak LR by a learning-rate range test on the training data instead of train.lr
            (`--lr auto`, or `lr: auto` in the train section); the curve and the choice go to config.json.
    """

    max_length: int = 128
    epochs: float = 3.0
    warmup_ratio: float = 0.1
    lr_decay: float = 1.0
    freeze_layers: int = 0
    reinit_layers: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    patience: int = 0
    evals_per_epoch: int = 1
    pooling: Literal["mean", "cls", "pooler"] = "mean"
    max_chunks: int = 1
    stride: int = 64
    chunk_pooling: Literal["mean", "max"] = "mean"
    class_weight: Literal["none", "balanced"] = "none"
    threads: int = 0
    probe: bool = True
    head_init: Literal["auto", "random", "probe"] = "auto"
    head_lr_scale: float = 1.0
    probe_c: float = 0.0
    lr_auto: bool = False

    def __post_init__(self) -> None:
        if not self.head_lr_scale > 0:
            raise EncoderforgeError(f"--head-lr-scale must be positive, got {self.head_lr_scale}")
        if not (self.probe_c >= 0 and math.isfinite(self.probe_c)):
            raise EncoderforgeError(f"finetune.probe_c must be > 0 (or 0 = chosen on dev), got {self.probe_c}")
        for name in ("max_length", "max_chunks", "evals_per_epoch"):
            if getattr(self, name) < 1:
                raise EncoderforgeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("freeze_layers", "reinit_layers", "lora_rank", "patience", "stride", "threads"):
            if getattr(self, name) < 0:
                raise EncoderforgeError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise EncoderforgeError(f"--epochs must be positive, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise EncoderforgeError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.lr_decay <= 1:
            raise EncoderforgeError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.lora_alpha <= 0:
            raise EncoderforgeError(f"--lora-alpha must be positive, got {self.lora_alpha}")


@dataclass
class EmbedArgs:
    """Embedding fine-tuning (`finetune embed`): the loss over (query, positive [, negatives]) or scored pairs.

    Args:
        loss: auto (CoSENT for scored pairs, else multiple-negatives ranking), mnrl or cosent.
        scale: similarity scale = 1 / temperature (sentence-transformers' default 20).
        symmetric: MNRL in both directions (query -> document and document -> query).
        dims: Matryoshka widths trained besides the full one, e.g. [192, 96, 48] (empty = off).
        dim_weights: Matryoshka loss weights, one per `dims` entry in its order (empty = 1 each); the full width
            weighs 1 unless `dims` lists it. Weighting the small widths up trades full-width quality for truncation.
        layers: 2D Matryoshka: also train the pooled outputs of these layers (1-based, e.g. [2, 4]) at every width,
            so a model cut to its first layers still embeds well (eval-retrieval --layers measures it).
        attention_dropout: the encoder's attention dropout while fine-tuning (hidden dropout stays): 0 by default,
            since on CPU attention dropout forces the unfused attention path (slower steps: benchmarks/embed_step.py).
    """

    loss: Literal["auto", "mnrl", "cosent"] = "auto"
    scale: float = 20.0
    symmetric: bool = False
    dims: list[int] = field(default_factory=list)
    dim_weights: list[float] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.attention_dropout < 1:
            raise EncoderforgeError(f"embed.attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if not self.scale > 0:
            raise EncoderforgeError(f"embed.scale must be positive, got {self.scale}")
        bad = [d for d in self.dims if not isinstance(d, int) or d < 1]
        if bad:
            raise EncoderforgeError(f"embed.dims: {bad[0]!r} is not a positive width; e.g. --set embed.dims=[192,96,48]")
        twice = [d for i, d in enumerate(self.dims) if d in self.dims[:i]]
        if twice:
            raise EncoderforgeError(f"embed.dims: {twice[0]} appears twice; list each width once")
        if self.dim_weights and not self.dims:
            raise EncoderforgeError("embed.dim_weights weighs the Matryoshka widths: set embed.dims too (--dims 192,96,48)")
        if self.dim_weights and len(self.dim_weights) != len(self.dims):
            n = len(self.dim_weights)
            raise EncoderforgeError(
                f"embed.dim_weights: {n} weight{'s' if n != 1 else ''} for {len(self.dims)} widths in embed.dims "
                f"{self.dims}; give one weight per width, in the same order"
            )
        neg = [w for w in self.dim_weights if not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0)]
        if neg:
            raise EncoderforgeError(
                f"embed.dim_weights: {neg[0]!r} is not a positive weight; e.g. --set embed.dim_weights=[1,2,1]"
            )


@dataclass
class FinetuneConfig:
    """A fine-tuning run: the task, the start model, the files, the fine-tuning knobs and the loop's TrainArgs.

    Args:
        task: classify | multilabel | ner | regress | qa | embed.
        model: checkpoint directory (encoderforge or HF BERT) or zoo name.
    """

    task: TaskKind = "classify"
    model: str = "minilm-l6"
    data: FinetuneData = field(default_factory=FinetuneData)
    finetune: FinetuneArgs = field(default_factory=FinetuneArgs)
    embed: EmbedArgs = field(default_factory=EmbedArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(**TRAIN_DEFAULTS))

    def __post_init__(self) -> None:
        if self.train.micro_rows and self.train.batch_rows % self.train.micro_rows:
            raise EncoderforgeError(
                f"--batch-size={self.train.batch_rows} must be a multiple of --micro-batch={self.train.micro_rows}"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out_dir)


def finetune_config(
    task: str, path: str | Path | None = None, overrides: list[str] | None = None, *, values: dict[str, Any] | None = None
) -> FinetuneConfig:
    """Resolve a fine-tuning config: TrainArgs' fine-tuning defaults < the task's defaults < the YAML file <
    `values` (dotted keys, e.g. from CLI flags) < `--set` overrides.

    Args:
        task: the task kind (a file's own `task:` must agree).
        path: a YAML file such as configs/finetune-classify.yaml (None = defaults).
        overrides: ["train.lr=1e-4", ...].
        values: {"train.lr": 1e-4, "data.train": "train.csv"}; None values are skipped.
    Returns:
        the validated config.
    """
    if task not in LABEL_TYPES:
        raise EncoderforgeError(f"unknown task {task!r}; use one of {sorted(LABEL_TYPES)}")
    raw: dict[str, Any] = merge({"task": task, "train": dict(TRAIN_DEFAULTS)}, TASK_DEFAULTS.get(task, {}))
    if path is not None:
        own = read_yaml(path)
        if own.get("task", task) != task:
            raise EncoderforgeError(
                f"{path}: task is {own['task']!r} but the command is `finetune {task}`; "
                f"use `encoderforge finetune {own['task']} --config {path}`"
            )
        bad = sorted(set(own.get("train") or {}) & set(DERIVED))
        if bad:
            raise EncoderforgeError(f"{path}: train.{bad[0]} is derived in fine-tuning; set {DERIVED[bad[0]]} instead")
        raw = merge(raw, own)
    raw, overrides, values = lr_auto(raw, overrides, values)
    for key, value in (values or {}).items():
        if value is not None:
            section, _, leaf = key.rpartition(".")
            node = raw.setdefault(section, {}) if section else raw
            node[leaf] = value
    for item in overrides or []:
        key = item.partition("=")[0]
        if key.startswith("train.") and key[6:] in DERIVED:
            raise EncoderforgeError(f"--set {item!r}: {key} is derived in fine-tuning; set {DERIVED[key[6:]]} instead")
    return load_config(None, overrides, FinetuneConfig, base=raw, where=str(path) if path is not None else None)


def default_lr(task: str) -> float:
    """The peak learning rate a `finetune TASK` run gets when none is given."""
    return float(TASK_DEFAULTS.get(task, {}).get("train", {}).get("lr", TRAIN_DEFAULTS["lr"]))


def lr_auto(
    raw: dict[str, Any], overrides: list[str] | None, values: dict[str, Any] | None
) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """`train.lr: auto` (YAML, `--lr auto`, `--set train.lr=auto`) means `finetune.lr_auto: true` with train.lr at its
    default; a number given later (a flag over the YAML, a --set over both) turns it off again."""

    def is_auto(v: Any) -> bool:
        return str(v).strip().lower() == "auto"

    values = dict(values or {})
    if is_auto((raw.get("train") or {}).get("lr", "")):
        raw = merge(raw, {"train": {"lr": default_lr(str(raw.get("task", "")))}, "finetune": {"lr_auto": True}})
    if values.get("train.lr") is not None:
        raw = merge(raw, {"finetune": {"lr_auto": is_auto(values["train.lr"])}})
        if is_auto(values["train.lr"]):
            del values["train.lr"]
    sets = []
    for item in overrides or []:
        key, _, value = (x.strip() for x in item.partition("="))
        if key == "train.lr":
            sets.append("finetune.lr_auto=" + ("true" if is_auto(value) else "false"))
            if is_auto(value):
                continue
        sets.append(item)
    return raw, sets, values
