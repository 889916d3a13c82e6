"""A search space file (SPACE.yaml) -> a validated SearchSpace; the budget string (`30m`) -> seconds.

    task: multilabel                   # the fine-tuning task (the metric and its direction come from it)
    recipe: configs/my-recipe.yaml     # optional: a finetune recipe the trials start from
    fixed:                             # dotted FinetuneConfig keys every trial sets (as --set does)
      data.train: data/train.jsonl
      data.dev: data/dev.jsonl
      data.test: data/test.jsonl       # scored per trial, never used to choose
    search:                            # dotted keys -> a range or a list of choices
      train.lr: {low: 1.0e-5, high: 3.0e-4, log: true}
      finetune.epochs: {low: 2, high: 6}               # ints -> integer range
      train.batch_rows: [16, 32]
      finetune.pooling: [mean, cls, pooler]
      finetune.lr_decay: {low: 0.8, high: 1.0}
      finetune.head_init: [probe, random]
      finetune.freeze_layers: [0, 2]
    seed: 0                            # the sampler's seed
    pruner: hyperband                  # hyperband | halving | none (stop weak trials at their dev evaluations)
    workers: 2                         # trials at once, one thread each (default: the CPU count)

A pretraining search (`kind: pretrain`) takes a pretraining recipe and searches its keys, e.g. small architectures
at a fixed step budget, choosing by the held-out MLM loss (the trial's cost is its training time):

    kind: pretrain
    recipe: configs/pretrain-tiny.yaml
    fixed: {data.shards: runs/shards, model.tokenizer: runs/tok/tokenizer.json, train.steps: 300}
    search:
      model.overrides.num_layers: {low: 2, high: 6}
      model.overrides.hidden_size: [128, 256]
      model.overrides.intermediate_size: [512, 1024]
      train.lr: {low: 3.0e-4, high: 3.0e-3, log: true}

(The masking ratio can be searched too, but the held-out loss of a harder masking task is higher by design: compare
such trials on a downstream task, not on this loss.)

Every key is checked against the fine-tuning (or pretraining) config by resolving it at its lowest and highest values, so an unknown
key, a value the config refuses or a range the config cannot hold fails before any training, naming the key.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from encoderforge import EncoderforgeError
from encoderforge.config import read_yaml
from encoderforge.recipes.finetune_config import LABEL_TYPES, finetune_config

PRUNERS = ("hyperband", "halving", "none")
TOP = {"kind", "task", "recipe", "fixed", "search", "seed", "pruner", "workers"}
KINDS = ("finetune", "pretrain")
FIXED_BY_SEARCH = {"train.out_dir", "finetune.threads", "train.progress"}  # each trial's own


@dataclass
class Param:
    key: str  # dotted FinetuneConfig key
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this key (the key is the parameter's name in the study)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high  # type: ignore[operator]

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


@dataclass
class SearchSpace:
    task: str
    recipe: str | None
    fixed: dict[str, Any]
    params: list[Param]
    seed: int = 0
    pruner: str = "hyperband"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    where: str = "space"
    kind: str = "finetune"

    def config(self, values: dict[str, Any], out_dir: str | Path) -> Any:
        """The config of one trial: recipe < fixed < the trial's values; one thread, no progress bar (a FinetuneConfig,
        or a PretrainConfig for kind: pretrain, whose trial process sets its one thread itself)."""
        if self.kind == "pretrain":
            from encoderforge.recipes.pretrain import load_config

            own = {"train.out_dir": str(out_dir), "train.progress": False}
            sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for k, v in {**self.fixed, **values, **own}.items()]  # fmt: skip
            return load_config(self.recipe, sets)
        own = {"train.out_dir": str(out_dir), "finetune.threads": 1, "train.progress": False}
        return finetune_config(self.task, self.recipe, values={**self.fixed, **values, **own})

    @property
    def metric(self) -> str:
        """What the search chooses by: the task's primary dev metric, or pretraining's held-out MLM loss."""
        if self.kind == "pretrain":
            return "eval_mlm_loss"
        from encoderforge.tasks.registry import TASKS

        return TASKS[self.task].primary

    @property
    def maximize(self) -> bool:
        if self.kind == "pretrain":
            return False
        from encoderforge.tasks.registry import TASKS

        return TASKS[self.task].greater_is_better

    def max_evals(self) -> int:
        """The most dev evaluations a trial can make: the pruner's maximum resource (kind: finetune)."""
        if self.kind != "finetune":
            return 1
        base = self.config({}, "x").finetune
        top = {
            p.key: max(p.extremes())
            for p in self.params
            if p.choices is None or all(isinstance(c, (int, float)) for c in p.choices)
        }
        epochs = max(base.epochs, float(top.get("finetune.epochs", 0)))
        evals = max(base.evals_per_epoch, int(top.get("finetune.evals_per_epoch", 0)))
        return max(1, math.ceil(epochs * evals))

    def defaults(self) -> dict[str, Any] | None:
        """The searched keys at the values the trials would get without the search, if all lie inside the space
        (the search then enqueues them as its first trial: the defaults are measured in the same study)."""
        base = self.config({}, "unused")
        got = {p.key: _get(base, p.key) for p in self.params}
        return got if all(p.contains(got[p.key]) for p in self.params) else None


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else getattr(cfg, part, None)
    return cfg


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate SPACE.yaml (module docstring); every error names the file and the key."""
    where = str(path)
    raw = read_yaml(path)
    unknown = sorted(set(raw) - TOP)
    if unknown:
        raise EncoderforgeError(f"{where}: unknown top-level key {unknown[0]!r}; use {sorted(TOP)}")
    kind = str(raw.get("kind", "finetune"))
    if kind not in KINDS:
        raise EncoderforgeError(f"{where}: kind: {kind!r}; use one of {list(KINDS)}")
    task = str(raw.get("task", "" if kind == "finetune" else "pretrain"))
    if kind == "finetune" and task not in LABEL_TYPES:
        raise EncoderforgeError(f"{where}: task: {task!r}; set one of {sorted(LABEL_TYPES)}")
    if kind == "pretrain" and not raw.get("recipe"):
        raise EncoderforgeError(
            f"{where}: recipe: a pretraining search needs a pretraining recipe, e.g. configs/pretrain-tiny.yaml"
        )
    search = raw.get("search")
    if not isinstance(search, dict) or not search:
        raise EncoderforgeError(
            f"{where}: search: is empty; give at least one key, e.g. search: {{train.lr: {{low: 1.0e-5, high: 3.0e-4, log: true}}}}"
        )
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise EncoderforgeError(f"{where}: fixed: expected a mapping of dotted keys to values")
    for key in (*fixed, *search):
        if key in FIXED_BY_SEARCH:
            raise EncoderforgeError(f"{where}: {key} is set by the search for each trial; remove it")
    both = sorted(set(fixed) & set(search))
    if both:
        raise EncoderforgeError(f"{where}: {both[0]} is both fixed and searched; keep it in one of fixed: or search:")
    pruner = str(raw.get("pruner", "hyperband"))
    if pruner not in PRUNERS:
        raise EncoderforgeError(f"{where}: pruner: {pruner!r}; use one of {list(PRUNERS)}")
    workers = raw.get("workers", os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise EncoderforgeError(f"{where}: workers: {workers!r}; give a positive integer (trials at once)")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise EncoderforgeError(f"{where}: seed: {seed!r}; give an integer")
    recipe = None if raw.get("recipe") is None else str(raw["recipe"])  # paths are relative to where you run, as in fixed:
    params = [_param(k, v, where) for k, v in search.items()]
    space = SearchSpace(task, recipe, dict(fixed), params, seed, pruner, workers, where, kind)
    try:
        base = space.config({}, "check")
    except EncoderforgeError:
        base = None  # _check_keys names the key at fault
    for p in params:  # a range's type is the config field's, not the YAML literal's ({low: 0, high: 1} of a float)
        if p.integer and isinstance(_get(base, p.key), float):
            p.integer = False
    _check_keys(space)
    return space


def _param(key: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        if not spec:
            raise EncoderforgeError(f"{where}: search.{key}: an empty list of choices; give at least one value")
        if len({repr(x) for x in spec}) != len(spec):
            raise EncoderforgeError(f"{where}: search.{key}: repeated choices {spec}; list each value once")
        return Param(key, choices=spec)
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
        raise EncoderforgeError(f"{where}: search.{key}: expected a list of choices or {{low, high[, log]}}, got {spec!r}")
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)):
        raise EncoderforgeError(f"{where}: search.{key}: low and high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise EncoderforgeError(f"{where}: search.{key}: low={low} is not below high={high}; swap them or use a list")
    if log and low <= 0:
        raise EncoderforgeError(f"{where}: search.{key}: a log range needs low > 0, got {low}")
    return Param(key, low, high, log, integer=isinstance(low, int) and isinstance(high, int))


def _check_keys(space: SearchSpace) -> None:
    """Resolve the fine-tuning config with each fixed key alone, then at each searched key's extremes (the others at
    their first value): an unknown key or a refused value fails here, naming the key."""
    for key, value in space.fixed.items():
        try:
            space.config({key: value}, "check")
        except EncoderforgeError as e:
            raise EncoderforgeError(f"{space.where}: fixed.{key}={value!r}: {e}") from None
    first = {p.key: p.extremes()[0] for p in space.params}
    for p in space.params:
        for value in p.extremes():
            try:
                space.config({**first, p.key: value}, "check")
            except EncoderforgeError as e:
                raise EncoderforgeError(f"{space.where}: search.{p.key}={value!r}: {e}") from None


def parse_budget(text: str) -> float:
    """`90s`, `30m`, `1.5h` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise EncoderforgeError(f"--budget {text!r}: give a positive duration such as 90s, 30m or 1.5h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
