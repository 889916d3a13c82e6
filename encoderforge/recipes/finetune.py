"""Fine-tuning: labelled files -> the ONE training loop -> a run directory that `encoderforge predict` serves.

    RUN/
      task.json        kind, labels, max_length, pooling, chunking (+ thresholds for multi-label): how to predict
      model/           encoderforge checkpoint (config.json, model.safetensors with the head under "head.*", tokenizer)
      metrics.json     dev and test metrics of the best checkpoint, epochs, seconds per epoch, peak RSS
      metrics.jsonl    the training curve (loss, lr, dev metrics per evaluation)
      config.json      the resolved FinetuneConfig, the input files' digests, steps, the peak LR used
      lr_find.json     with `--lr auto`: the range test's curve and the LR it chose (training/lr_find.py)
      .encoderforge-run.json  the run marker (kind, running/finished, config): what resume and --overwrite check

The best dev checkpoint (primary metric of the task, in its declared direction) is kept in memory and in every
resumable checkpoint, and restored before the final evaluation; training stops early after `patience`
evaluations without improvement. A killed run resumes from checkpoints/ when the same command runs again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, cast

import torch

from encoderforge import EncoderforgeError
from encoderforge.config import to_dict
from encoderforge.data.readers import Dataset, Schema, read_dataset, split_dev
from encoderforge.fileio import atomic_file, clear_run_dir, file_digest, prepare_run_dir, write_marker
from encoderforge.model import checkpoint
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.recipes.finetune_config import FinetuneConfig, finetune_config
from encoderforge.tasks.registry import TASKS
from encoderforge.tasks.sequences import steps_per_epoch
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.args import TrainArgs
from encoderforge.training.best import BestKeeper
from encoderforge.training.distributed import barrier, setup, teardown
from encoderforge.training.loop import train as run_loop
from encoderforge.training.lora import apply_lora, merge_lora
from encoderforge.training.lr_find import find_lr, range_steps
from encoderforge.training.params import freeze_lower, param_groups, reinit_top


@dataclass
class FinetuneResult:
    run_dir: Path
    metrics: dict[str, Any]
    skipped: bool = False  # the run was already finished with this config: nothing was trained


SAFE = (
    "finetune.threads",
    "train.progress",
    "train.save_every",
    "train.keep_checkpoints",
    "train.trim_heap_every",
    "train.trim_heap_growth",
)


def schema_of(cfg: FinetuneConfig) -> Schema:
    """How the config's labelled files are read: its text and label fields, the task's label type, allowed labels."""
    d = cfg.data
    return Schema(
        text_fields=tuple(d.text_field),
        label_field=d.label_field,
        label_type=TASKS[cfg.task].label_type,  # type: ignore[arg-type]
        labels=tuple(d.labels) if d.labels else None,
        label_sep=d.label_sep,
    )


def load_split(data: str | None, schema: Schema, what: str) -> Dataset | None:
    """A labelled file read and validated with `schema` (None: no such split)."""
    if not data:
        return None
    ds = read_dataset(data, schema)
    if not len(ds):
        raise EncoderforgeError(f"{data}: the {what} file holds no examples")
    return ds


def finetune(
    cfg: FinetuneConfig,
    *,
    train: Dataset | None = None,
    dev: Dataset | None = None,
    test: Dataset | None = None,
    overwrite: bool = False,
    report: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `cfg.model` on `cfg.task` and write the run directory `cfg.train.out_dir` (module docstring).

    Args:
        cfg: the resolved config (`finetune_config("classify", "my.yaml", ["train.lr=1e-4"])`).
        train / dev / test: in-memory Datasets (e.g. from a real-data loader) used instead of cfg.data's files;
            without dev, a stratified `data.dev_fraction` of train is held out; without test, no test score.
        overwrite: replace a finished run (only a directory that carries encoderforge's run marker).
        report: called as report(epochs done, dev primary metric) after every dev evaluation (a search's pruner;
            it may raise to end the run there, which leaves the run unfinished).
    Returns:
        the run directory and its metrics. Rerunning a finished run with the same config and files does
        nothing and returns its metrics; rerunning an interrupted one resumes from its last checkpoint.
    Example:
        >>> finetune(finetune_config("classify", values={"data.train": "train.csv", "train.out_dir": "runs/topic"}))
    """
    spec = TASKS[cfg.task]
    run = cfg.run_dir
    if not cfg.train.out_dir:
        raise EncoderforgeError("no run directory; pass --out DIR (train.out_dir)")
    d = cfg.data
    schema = schema_of(cfg)
    model_dir = resolve_model(cfg.model)
    files = [d.train, d.dev, d.test]
    record = {
        **to_dict(cfg),
        "inputs": {
            "files": {f: file_digest(f) for f in files if f},
            "in_memory": [str(ds.path) for ds in (train, dev, test) if ds is not None],
        },
    }
    if any(ds is not None for ds in (train, dev, test)):
        record["inputs"]["unverifiable"] = True  # in-memory data: a finished run can never be proven identical
    defaults = to_dict(finetune_config(cfg.task))  # fields added since an older run was recorded compare to these
    action = prepare_run_dir(
        run, "finetune", record, inputs=[*files, model_dir], overwrite=overwrite, safe_changes=SAFE, defaults=defaults,
        finished_resumes=False,  # a finished run keeps no checkpoint: "resume" would retrain it from scratch
    )  # fmt: skip
    if action == "done" and not record["inputs"].get("unverifiable"):
        return FinetuneResult(run, json.loads((run / "metrics.json").read_text(encoding="utf-8")), skipped=True)
    if action == "done":
        raise EncoderforgeError(f"{run}: already holds a finished run; pass --overwrite or choose another --out")
    if cfg.finetune.threads:
        torch.set_num_threads(cfg.finetune.threads)
    train_ds = train or load_split(d.train, schema, "train")
    dev_ds, test_ds = dev or load_split(d.dev, schema, "dev"), test or load_split(d.test, schema, "test")
    if train_ds is None:
        raise EncoderforgeError("no training data; pass --train FILE (data.train)")
    if dev_ds is None:
        train_ds, dev_ds = split_dev(train_ds, d.dev_fraction, cfg.train.seed)
    labels = list(schema.labels) if schema.labels else spec.labels_from(train_ds, dev_ds, test_ds)
    for ds in (train_ds, dev_ds, test_ds):
        if ds is not None:
            spec.check_examples(ds)
            if ds is not train_ds:
                spec.check_labels(ds, labels)
    tok = load_tokenizer(model_dir)
    loaded = checkpoint.load(model_dir)
    if cfg.finetune.max_length > loaded.encoder.cfg.max_position:
        raise EncoderforgeError(
            f"--max-length={cfg.finetune.max_length} exceeds the model's max_position={loaded.encoder.cfg.max_position}"
        )
    dist = setup(cfg.train.device)
    try:
        if action == "overwrite" and dist.main:  # only now: every input has been read and validated; one rank deletes
            clear_run_dir(run)
        barrier(dist)
        torch.manual_seed(cfg.train.seed)
        net = spec.build_model(loaded.encoder, labels, cfg)
        encoder = cast(Encoder, net.encoder)  # every task model is encoder + head (TaskSpec.build_model)
        job = spec.build_task(tok, labels, rows(train_ds), rows(dev_ds), cfg, rank=dist.rank, world=dist.world)
        probe_report = linear_probe(cfg, net, job, dev_ds, test_ds)  # on the start encoder, before any change to it
        freeze_lower(encoder, cfg.finetune.freeze_layers)
        reinit_top(encoder, cfg.finetune.reinit_layers, seed=cfg.train.seed)
        if cfg.finetune.lora_rank:
            apply_lora(encoder, cfg.finetune.lora_rank, cfg.finetune.lora_alpha)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        per_epoch = steps_per_epoch(len(train_ds), cfg.train.batch_rows)
        targs = train_args(cfg, per_epoch)
        if dist.main:
            run.mkdir(parents=True, exist_ok=True)
            write_marker(run, "finetune", "running", record)
        barrier(dist)

        def groups() -> list[dict[str, Any]]:
            f = cfg.finetune
            return param_groups(net, weight_decay=cfg.train.weight_decay, lr_decay=f.lr_decay, head_scale=f.head_lr_scale)

        lr_auto = None
        if cfg.finetune.lr_auto:  # the range test from the model as training will start it (after probe, freezing, LoRA)
            lr_auto = find_lr(
                net, job, targs, dist, run_dir=run, steps=range_steps(per_epoch), groups=groups, tokenizer_dir=model_dir
            )
            targs = dataclasses.replace(targs, lr=lr_auto.lr)
        if dist.main:
            with atomic_file(run / "config.json") as f:
                json.dump(
                    {
                        **record,
                        "train_files": {
                            "train": str(train_ds.path),
                            "dev": str(dev_ds.path),
                            "test": None if test_ds is None else str(test_ds.path),
                        },
                        "schema": asdict(schema),
                        "steps": targs.steps,
                        "steps_per_epoch": per_epoch,
                        "lr": targs.lr,
                        **({"lr_auto": lr_auto.as_dict()} if lr_auto is not None else {}),
                    },
                    f,
                    indent=2,
                )
        barrier(dist)

        def on_epoch(step: int, value: float) -> None:
            # the final evaluation is the run's end: `epochs` exactly (steps round epochs x per_epoch, e.g. 1.25 x 9 -> 11
            # steps = 1.22 epochs, which a search would read as unfinished)
            cast(Callable[[float, float], None], report)(cfg.finetune.epochs if step >= targs.steps else step / per_epoch, value)

        keeper = BestKeeper(
            net,
            job.primary,
            cfg.finetune.patience,
            greater_is_better=spec.greater_is_better,
            report=None if report is None else on_epoch,
        )
        t0 = time.perf_counter()
        run_loop(
            net,
            job,
            targs,
            dist,
            tokenizer_dir=model_dir,
            param_groups=groups(),
            on_eval=keeper,
            extra_state=keeper,
        )
        train_s = time.perf_counter() - t0
        keeper.restore()
        if cfg.finetune.lora_rank:
            merge_lora(encoder)  # a plain encoder again: the Engine and every export read it unchanged
        if not dist.main:
            return FinetuneResult(run, {})
        extra_json = spec.calibrate(job, net, rows(dev_ds))  # e.g. per-label thresholds tuned on dev
        metrics: dict[str, Any] = {
            "task": cfg.task,
            "model": cfg.model,
            "primary": job.primary,
            "dev": job.evaluate(net, rows(dev_ds)),
        }
        if test_ds is not None:
            metrics["test"] = job.evaluate(net, rows(test_ds))
        if probe_report is not None:
            metrics["probe"] = probe_report
        epochs_run = keeper.last_step / per_epoch
        metrics.update(
            best_step=keeper.best_step,
            best_epoch=round(keeper.best_step / per_epoch, 2),
            epochs_run=round(epochs_run, 2),
            stopped_early=keeper.stopped,
            train_s=round(train_s, 1),
            s_per_epoch=round(train_s / max(epochs_run, 1e-9), 1),
            train_examples=len(train_ds),
            dev_examples=len(dev_ds),
            test_examples=0 if test_ds is None else len(test_ds),
            lr=targs.lr,
            **({"lr_auto_s": lr_auto.seconds} if lr_auto is not None else {}),
            peak_rss_mb=round(peak_rss_mb(), 1),
            threads=torch.get_num_threads(),
            trainable_params=trainable,
        )
        check_finite(metrics, run)
        meta = {
            "kind": cfg.task,
            "labels": labels,
            "text_fields": len(schema.text_fields),
            **spec.task_json(cfg),
            **extra_json,
            "source_model": cfg.model,
        }
        write_run(run, net, model_dir, meta, metrics)
        write_marker(run, "finetune", "finished", record)
        return FinetuneResult(run, metrics)
    finally:
        teardown(dist)


PROBED = ("classify", "multilabel", "ner")  # the tasks whose head is one linear layer over labels (pooled or per word)


def linear_probe(cfg: FinetuneConfig, net: torch.nn.Module, job: Any, dev: Dataset, test: Dataset | None) -> dict | None:
    """Fit the frozen-features logistic regression (tasks/probe.py) and score it; with head_init=probe the model keeps
    the probe's head (LP-FT), else its random head is put back. Deterministic, so a resumed run refits the same."""
    f = cfg.finetune
    init = ("probe" if cfg.task in PROBED else "random") if f.head_init == "auto" else f.head_init
    if cfg.task not in PROBED or not (f.probe or init == "probe"):
        if init == "probe":
            tasks = f"{', '.join(PROBED[:-1])} and {PROBED[-1]}"
            raise EncoderforgeError(f"finetune.head_init=probe applies to {tasks}, not {cfg.task!r}; use random")
        return None
    from encoderforge.tasks.probe import probe_run

    random_head = {k: v.clone() for k, v in net.head.state_dict().items()}  # type: ignore[union-attr, operator]
    test_rows = rows(test) if test is not None else None
    _, report = probe_run(cfg.task, net, job, rows(dev), test_rows, cfg.train.seed, c=f.probe_c or None)
    if init == "random":
        net.head.load_state_dict(random_head)  # type: ignore[union-attr, operator]
    return report


def train_args(cfg: FinetuneConfig, per_epoch: int) -> TrainArgs:
    """The loop's arguments for a fine-tuning run: epochs -> steps, warmup ratio -> steps, `evals_per_epoch` dev
    evaluations per epoch, resumable checkpoints every `train.save_every` steps (deleted when the run ends)."""
    steps = max(1, round(cfg.finetune.epochs * per_epoch))
    return dataclasses.replace(
        cfg.train,
        steps=steps,
        warmup_steps=round(cfg.finetune.warmup_ratio * steps),
        log_every=max(1, per_epoch // 20),
        eval_every=max(1, per_epoch // cfg.finetune.evals_per_epoch),
        resume=True,
    )


def check_finite(metrics: dict[str, Any], run: Path) -> None:
    """A NaN/inf metric means training diverged (or a label was non-finite): fail instead of writing NaN as a result."""
    bad = [
        f"{split}.{k}"
        for split in ("dev", "test")
        for k, v in (metrics.get(split) or {}).items()
        if isinstance(v, float) and not math.isfinite(v)
    ]
    if bad:
        raise EncoderforgeError(
            f"{run}: training diverged ({', '.join(bad)} is not finite); lower --lr or check the "
            "labels; the run was not marked finished"
        )


def write_run(run: Path, net: torch.nn.Module, model_dir: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> None:
    """model/ (encoder + head under "head.*"), task.json, metrics.json; drop the loop's resume-only checkpoints."""
    head = {f"head.{k}": v for k, v in cast(torch.nn.Module, net.head).state_dict().items()}
    checkpoint.save(cast(Encoder, net.encoder), run / "model", tokenizer_dir=model_dir, extra=head)
    with atomic_file(run / "task.json") as f:
        json.dump(meta, f, indent=2)
    with atomic_file(run / "metrics.json") as f:
        json.dump(metrics, f, indent=2)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def rows(ds: Dataset) -> list[tuple[Any, Any]]:
    """(texts, label) pairs, the form every task's constructor and `evaluate` take."""
    return [(ex.texts, ex.label) for ex in ds.examples]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
