"""Fine-tuning: labelled files -> the ONE training loop -> a run directory that `encoderforge predict` serves.

    RUN/
      task.json        kind, labels, max_length, pooling, chunking (+ thresholds for multi-label): how to predict
      model/           encoderforge checkpoint (config.json, model.safetensors with the head under "head.*", tokenizer)
      metrics.json     dev and test metrics of the best checkpoint, epochs, seconds per epoch, peak RSS
      metrics.jsonl    the training curve (loss, lr, dev metrics per evaluation)
      config.json      every option of the run (FinetuneArgs, model, data paths)

The best dev checkpoint (primary metric of the task) is kept in memory and restored before the final
evaluation; training stops early after `patience` evaluations without improvement.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from encoderforge import EncoderforgeError
from encoderforge.data.readers import Dataset, Schema, read_dataset, split_dev
from encoderforge.fileio import atomic_file
from encoderforge.model import checkpoint
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.registry import TASKS, TaskKind
from encoderforge.tasks.sequences import steps_per_epoch
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import setup, teardown
from encoderforge.training.loop import train as run_loop
from encoderforge.training.lora import apply_lora, merge_lora
from encoderforge.training.params import freeze_lower, param_groups, reinit_top


@dataclass
class FinetuneArgs:
    """Fine-tuning hyperparameters (each becomes a `--flag` of `encoderforge finetune`).

    Args:
        max_length: tokens per window including [CLS]/[SEP].
        epochs: passes over the training set (fractions allowed).
        batch_size: examples per optimizer step; micro_batch: per forward pass (0 = batch_size, no accumulation).
        lr: peak learning rate (linear warmup over warmup_ratio of the steps, then linear decay to 0).
        weight_decay: AdamW decay on matrices.
        lr_decay: layer-wise LR decay factor per layer below the head (1 = off; 0.8-0.95 typical).
        freeze_layers: freeze the embeddings and this many lowest layers (0 = none).
        reinit_layers: re-initialise this many top layers before training.
        lora_rank / lora_alpha: train LoRA adapters of this rank (scaled by alpha / rank) on every linear layer of
            the frozen encoder, merged into the weights before saving (0 = full fine-tuning).
        patience: stop after this many evaluations without dev improvement (0 = never stop early).
        evals_per_epoch: dev evaluations per epoch (the best one is kept).
        pooling: how a window becomes a vector: "mean" (sentence-transformers models) or "cls".
        max_chunks / stride / chunk_pooling: long documents as up to max_chunks windows overlapping by stride
            tokens, whose logits are pooled by "mean" or "max" (max_chunks=1: plain truncation).
        class_weight: "none" or "balanced" loss weights (single-label classification).
        dev_fraction: with no dev file, hold out this stratified share of train as dev.
        seed: initialisation, data order, dropout.
        threads: torch intra-op threads (0 = torch default).
        device / precision: as in training ("auto" picks CUDA and bf16 where available).
    """

    max_length: int = 128
    epochs: float = 3.0
    batch_size: int = 32
    micro_batch: int = 0
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    lr_decay: float = 1.0
    freeze_layers: int = 0
    reinit_layers: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    patience: int = 0
    evals_per_epoch: int = 1
    pooling: Literal["mean", "cls"] = "mean"
    max_chunks: int = 1
    stride: int = 64
    chunk_pooling: Literal["mean", "max"] = "mean"
    class_weight: Literal["none", "balanced"] = "none"
    dev_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "max_chunks", "evals_per_epoch"):
            if getattr(self, name) < 1:
                raise EncoderforgeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0 or self.lr <= 0:
            raise EncoderforgeError(f"--epochs and --lr must be positive (got {self.epochs}, {self.lr})")
        if not 0 <= self.warmup_ratio < 1:
            raise EncoderforgeError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.micro_batch and self.batch_size % self.micro_batch:
            raise EncoderforgeError(f"--batch-size={self.batch_size} must be a multiple of --micro-batch={self.micro_batch}")


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict[str, Any]


DataArg = str | Path | Dataset | None


def load_split(data: DataArg, schema: Schema, what: str) -> Dataset | None:
    """A path is read and validated with `schema`; a Dataset (e.g. built from a real-data loader) is used as is."""
    if data is None or isinstance(data, Dataset):
        return data
    ds = read_dataset(data, schema)
    if not len(ds):
        raise EncoderforgeError(f"{data}: the {what} file holds no examples")
    return ds


def finetune(task: TaskKind, model: str | Path, train: DataArg, dev: DataArg = None, test: DataArg = None, *,
             out: str | Path, schema: Schema | None = None, args: FinetuneArgs | None = None,
             overwrite: bool = False) -> FinetuneResult:
    """Fine-tune `model` on a task and write a run directory (see the module docstring).

    Args:
        task: "classify" (one text or a pair), "multilabel", "ner", "regress" (one text or a pair) or "qa".
        model: a checkpoint directory (ours or Hugging Face BERT) or a zoo name such as "minilm-l6".
        train / dev / test: labelled files (.csv/.tsv/.jsonl/.tab/CoNLL) or Datasets; without dev, a stratified
            `args.dev_fraction` of train is held out; without test, no test score is reported.
        out: the run directory.
        schema: fields and label type of the files (the task's default label type is enforced).
        args: hyperparameters.
        overwrite: replace a finished run directory.
    Returns:
        the run directory and its metrics.
    Example:
        >>> finetune("classify", "minilm-l6", "train.csv", "dev.csv", "test.csv", out="runs/topic")
    """
    spec = TASKS.get(task)
    if spec is None:
        raise EncoderforgeError(f"unknown task {task!r}; use one of {sorted(TASKS)}")
    args = args or FinetuneArgs()
    schema = schema or Schema(label_type=spec.label_type)
    if schema.label_type != spec.label_type:
        raise EncoderforgeError(f"task {task!r} needs label type {spec.label_type!r}, the schema says {schema.label_type!r}")
    run = Path(out)
    if (run / "task.json").exists() and not overwrite:
        raise EncoderforgeError(f"{run}: already holds a finished run; pass --overwrite or choose another --out")
    if run.exists() and overwrite:
        shutil.rmtree(run)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_ds, dev_ds, test_ds = (load_split(d, schema, w) for d, w in ((train, "train"), (dev, "dev"), (test, "test")))
    if train_ds is None:
        raise EncoderforgeError("no training data; pass --train FILE")
    if dev_ds is None:
        train_ds, dev_ds = split_dev(train_ds, args.dev_fraction, args.seed)
    labels = list(schema.labels) if schema.labels else spec.labels_from(train_ds, dev_ds, test_ds)
    for ds in (dev_ds, test_ds):
        if ds is not None:
            spec.check_labels(ds, labels)

    model_dir = resolve_model(model)
    tok = load_tokenizer(model_dir)
    loaded = checkpoint.load(model_dir)
    if args.max_length > loaded.encoder.cfg.max_position:
        raise EncoderforgeError(f"--max-length={args.max_length} exceeds the model's max_position={loaded.encoder.cfg.max_position}")
    dist = setup(args.device)
    try:
        torch.manual_seed(args.seed)
        net = spec.build_model(loaded.encoder, labels, args)
        freeze_lower(net.encoder, args.freeze_layers)
        reinit_top(net.encoder, args.reinit_layers, seed=args.seed)
        if args.lora_rank:
            apply_lora(net.encoder, args.lora_rank, args.lora_alpha)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        job = spec.build_task(tok, labels, rows(train_ds), rows(dev_ds), args, rank=dist.rank, world=dist.world)
        per_epoch = steps_per_epoch(len(train_ds), args.batch_size)
        targs = train_args(args, per_epoch, run)
        if dist.main:
            run.mkdir(parents=True, exist_ok=True)
            with atomic_file(run / "config.json") as f:
                json.dump({"task": task, "model": str(model), "train": str(train_ds.path), "dev": str(dev_ds.path),
                           "test": None if test_ds is None else str(test_ds.path), "schema": asdict(schema),
                           "args": asdict(args), "steps": targs.steps, "steps_per_epoch": per_epoch}, f, indent=2)
        keeper = BestKeeper(net, job.primary, args.patience)
        t0 = time.perf_counter()
        run_loop(net, job, targs, dist, tokenizer_dir=model_dir, param_groups=param_groups(
            net, weight_decay=args.weight_decay, lr_decay=args.lr_decay), on_eval=keeper)
        train_s = time.perf_counter() - t0
        keeper.restore()
        if args.lora_rank:
            merge_lora(net.encoder)  # a plain encoder again: the Engine and every export read it unchanged
        if not dist.main:
            return FinetuneResult(run, {})
        extra_json = spec.calibrate(job, net, rows(dev_ds))  # e.g. per-label thresholds tuned on dev
        metrics: dict[str, Any] = {"task": task, "model": str(model), "primary": job.primary,
                                   "dev": job.evaluate(net, rows(dev_ds))}
        if test_ds is not None:
            metrics["test"] = job.evaluate(net, rows(test_ds))
        epochs_run = keeper.last_step / per_epoch
        metrics.update(best_step=keeper.best_step, best_epoch=round(keeper.best_step / per_epoch, 2),
                       epochs_run=round(epochs_run, 2), stopped_early=keeper.stopped, train_s=round(train_s, 1),
                       s_per_epoch=round(train_s / max(epochs_run, 1e-9), 1), train_examples=len(train_ds),
                       dev_examples=len(dev_ds), test_examples=0 if test_ds is None else len(test_ds),
                       peak_rss_mb=round(peak_rss_mb(), 1), threads=torch.get_num_threads(), trainable_params=trainable)
        meta = {"kind": task, "labels": labels, "text_fields": len(schema.text_fields), **spec.task_json(args),
                **extra_json, "source_model": str(model)}
        write_run(run, net, model_dir, meta, metrics)
        return FinetuneResult(run, metrics)
    finally:
        teardown(dist)


def train_args(args: FinetuneArgs, per_epoch: int, run: Path) -> TrainArgs:
    """The loop's arguments for a fine-tuning run: epochs -> steps, BERT's AdamW settings, one dev evaluation per
    epoch (or `evals_per_epoch`), no mid-run checkpoints (the best weights are kept in memory)."""
    steps = max(1, round(args.epochs * per_epoch))
    return TrainArgs(steps=steps, batch_rows=args.batch_size, micro_rows=args.micro_batch, lr=args.lr,
                     warmup_steps=round(args.warmup_ratio * steps), schedule="linear", weight_decay=args.weight_decay,
                     beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0, precision=args.precision, device=args.device,
                     seed=args.seed, log_every=max(1, per_epoch // 20), eval_every=max(1, per_epoch // args.evals_per_epoch),
                     save_every=0, keep_checkpoints=1, out_dir=str(run), resume=True, progress=False)


def write_run(run: Path, net: torch.nn.Module, model_dir: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> None:
    """model/ (encoder + head under "head.*"), task.json, metrics.json; drop the loop's resume-only checkpoints."""
    head = {f"head.{k}": v for k, v in net.head.state_dict().items()}
    checkpoint.save(net.encoder, run / "model", tokenizer_dir=model_dir, extra=head)
    with atomic_file(run / "task.json") as f:
        json.dump(meta, f, indent=2)
    with atomic_file(run / "metrics.json") as f:
        json.dump(metrics, f, indent=2)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


class BestKeeper:
    """The loop's `on_eval` hook: remembers the weights of the best dev evaluation and asks for an early stop
    after `patience` evaluations without improvement (0 = never)."""

    def __init__(self, model: torch.nn.Module, metric: str, patience: int = 0):
        self.model, self.metric, self.patience = model, metric, patience
        self.best: float | None = None
        self.best_step = self.last_step = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.bad, self.stopped = 0, False

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        self.last_step = step
        value = metrics.get(self.metric)
        if value is None:
            raise EncoderforgeError(f"dev metrics have no {self.metric!r} (got {sorted(metrics)}); is the dev set empty?")
        if self.best is None or value > self.best:
            self.best, self.best_step, self.bad = value, step, 0
            self.state = {k: v.detach().to('cpu', copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.bad += 1
        self.stopped = bool(self.patience and self.bad >= self.patience)
        return self.stopped

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def rows(ds: Dataset) -> list[tuple[Any, Any]]:
    """(texts, label) pairs, the form every task's constructor and `evaluate` take."""
    return [(ex.texts, ex.label) for ex in ds.examples]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
