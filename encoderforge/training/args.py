"""Hyperparameters as typed dataclasses (litgpt `args.py`), and YAML configs with `--set key=value` overrides.

Every field is validated in `__post_init__` with a message naming the field; an unknown field in a YAML file
or an override is an error that names it and lists the known ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig
from encoderforge.training.schedules import SCHEDULES, Schedule

Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class TrainArgs:
    """How to train (shared by pretraining, fine-tuning and distillation).

    Args:
        steps: optimizer steps in total.
        batch_rows: global batch in rows (sequences) per optimizer step, over all processes.
        micro_rows: rows per forward pass per process; 0 = batch_rows / world (no gradient accumulation).
        lr: peak learning rate.
        warmup_steps: linear warmup steps.
        schedule: "linear" | "cosine" | "wsd" | "constant".
        min_lr_ratio: final learning rate as a fraction of lr.
        decay_fraction: for "wsd", the share of steps spent decaying.
        weight_decay: AdamW decay on matrices (never on biases, LayerNorm weights or other vectors).
        beta1, beta2, eps: AdamW moments (RoBERTa: 0.9, 0.98, 1e-6).
        grad_clip: clip the global gradient norm to this (0 = off).
        precision: "auto" (bf16 autocast where the device supports it, else fp32) | "fp32" | "bf16".
        device: "auto" | "cpu" | "cuda".
        seed: seeds initialisation, data order, masking and dropout.
        log_every, eval_every, save_every: in optimizer steps (0 = never; a final eval and save always happen).
        keep_checkpoints: how many step checkpoints to keep.
        out_dir: the run directory (config, metrics.jsonl, checkpoints, final model).
        resume: continue from the latest checkpoint in out_dir if there is one.
        progress: show a tqdm progress bar.
        trim_heap_every: on CPU, return freed heap memory to the OS every this many steps and after each
            evaluation (glibc malloc_trim; 0 = never). Keeps peak RSS near live memory when batch shapes vary.
    """

    steps: int = 1000
    batch_rows: int = 32
    micro_rows: int = 0
    lr: float = 5e-4
    warmup_steps: int = 100
    schedule: Schedule = "linear"
    min_lr_ratio: float = 0.0
    decay_fraction: float = 0.2
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    precision: Precision = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    out_dir: str = "runs/pretrain"
    resume: bool = True
    progress: bool = True
    trim_heap_every: int = 5

    def __post_init__(self) -> None:
        for name in ("steps", "batch_rows"):
            if getattr(self, name) <= 0:
                raise EncoderforgeError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("micro_rows", "warmup_steps", "log_every", "eval_every", "save_every", "grad_clip", "weight_decay",
                     "trim_heap_every"):
            if getattr(self, name) < 0:
                raise EncoderforgeError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise EncoderforgeError(f"train.lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise EncoderforgeError(f"train.schedule={self.schedule!r}; use one of {list(SCHEDULES)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise EncoderforgeError(f"train.precision={self.precision!r}; use 'auto', 'fp32' or 'bf16'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise EncoderforgeError(f"train.device={self.device!r}; use 'auto', 'cpu' or 'cuda'")
        if self.keep_checkpoints < 1:
            raise EncoderforgeError("train.keep_checkpoints must be >= 1 (resume needs one)")


@dataclass
class ModelArgs:
    """Which encoder to train.

    Args:
        preset: architecture preset for training from scratch ("bert-tiny", "bert-small", "bert-base", ...).
        init_from: a checkpoint directory (ours or Hugging Face BERT, e.g. MiniLM) for continued pretraining;
            its MLM head is reused when present, else a fresh one is initialised.
        tokenizer: tokenizer.json / vocab.txt / directory; defaults to init_from's tokenizer.
        overrides: EncoderConfig fields for a from-scratch preset, e.g. {attention: varlen, norm: pre}.
        freeze_encoder: train the heads only (the encoder, and so the tied decoder matrix, stays fixed): warms up
            a fresh MLM head before continued pretraining, and measures what the unadapted encoder already knows
            (its held-out MLM loss with a trained head) as the baseline of a domain-adaptation run.
        anchor_weight: continued MLM only (init_from): also pull the features of the unmasked tokens towards those
            of the init_from encoder, (1 - cosine) x this weight (tasks/anchor.py). Keeps a sentence-embedding
            model's features while it learns the domain's tokens; 0 = plain MLM.
    """

    preset: str = "bert-tiny"
    init_from: str | None = None
    tokenizer: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    freeze_encoder: bool = False
    anchor_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.anchor_weight < 0:
            raise EncoderforgeError(f"model.anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.anchor_weight and not self.init_from:
            raise EncoderforgeError("model.anchor_weight anchors to the encoder a run continues from; set "
                                    "model.init_from (or set model.anchor_weight=0 to train from scratch)")


@dataclass
class DataArgs:
    """Where the tokens come from.

    Args:
        shards: a directory made by `encoderforge data prepare` (its manifest names the corpora and weights).
        max_len: tokens per packed row (including [CLS]/[SEP] of each segment).
        eval_rows: held-out rows evaluated at each eval (from the manifest's eval split).
    """

    shards: str = ""
    max_len: int = 128
    eval_rows: int = 64

    def __post_init__(self) -> None:
        if self.max_len < 8:
            raise EncoderforgeError(f"data.max_len must be >= 8, got {self.max_len}")
        if self.eval_rows < 0:
            raise EncoderforgeError(f"data.eval_rows must be >= 0, got {self.eval_rows}")


@dataclass
class ElectraArgs:
    """Replaced-token detection (ELECTRA, Clark et al. 2020), used when `objective: electra`.

    Args:
        generator_width: generator hidden and FFN sizes as a fraction of the discriminator's (the paper finds
            1/4 to 1/2 best; a generator as strong as the discriminator makes the task too hard).
        generator_depth: generator layers as a fraction of the discriminator's (ELECTRA keeps the depth: 1.0).
        disc_weight: lambda, the weight of the discriminator's loss against the generator's MLM loss (paper: 50).
    """

    generator_width: float = 0.25
    generator_depth: float = 1.0
    disc_weight: float = 50.0

    def __post_init__(self) -> None:
        for name in ("generator_width", "generator_depth"):
            if not 0 < getattr(self, name) <= 1:
                raise EncoderforgeError(f"electra.{name}={getattr(self, name)} must be in (0, 1] "
                                        "(ELECTRA: width 0.25, depth 1.0)")
        if self.disc_weight <= 0:
            raise EncoderforgeError(f"electra.disc_weight must be positive, got {self.disc_weight} (ELECTRA: 50)")


@dataclass
class PretrainConfig:
    """A pretraining run: model, data, masking and training sections of the YAML file, and the objective:
    "mlm" (masked language modelling) or "electra" (replaced-token detection; the `electra` section applies)."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainArgs = field(default_factory=TrainArgs)
    objective: Literal["mlm", "electra"] = "mlm"
    electra: ElectraArgs = field(default_factory=ElectraArgs)

    def __post_init__(self) -> None:
        if self.objective not in ("mlm", "electra"):
            raise EncoderforgeError(f"objective={self.objective!r}; use 'mlm' or 'electra'")
        if self.model.anchor_weight and (self.objective != "mlm" or self.model.freeze_encoder):
            raise EncoderforgeError("model.anchor_weight applies to continued MLM of the whole encoder; set "
                                    "model.anchor_weight=0 with objective electra or model.freeze_encoder=true")


T = TypeVar("T")


def from_dict(cls: type[T], raw: dict[str, Any], *, where: str) -> T:
    """Build a (nested) dataclass from a dict, naming any unknown field with its dotted path."""
    if not isinstance(raw, dict):
        raise EncoderforgeError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EncoderforgeError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    kw = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kw[name] = from_dict(hint, value or {}, where=f"{where}.{name}")
        else:
            kw[name] = _coerce(value, hint, f"{where}.{name}")
    try:
        return cls(**kw)
    except TypeError as e:
        raise EncoderforgeError(f"{where}: {e}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Light type check: YAML gives int for float fields (accept), str for numbers is an error naming the field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    expected = {int: int, float: float, bool: bool, str: str}.get(hint)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise EncoderforgeError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls: type[T] = PretrainConfig) -> T:  # type: ignore[assignment]
    """Read a YAML config and apply `key.sub=value` overrides (values parsed as YAML: 1e-4, true, [a, b]).

    Args:
        path: the YAML file (None = all defaults).
        overrides: e.g. ["train.lr=1e-4", "model.preset=bert-small"].
        cls: the config dataclass.
    Returns:
        the validated config.
    """
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise EncoderforgeError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise EncoderforgeError(f"{path}: invalid YAML ({e})") from None
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise EncoderforgeError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise EncoderforgeError(f"--set {item!r}: {p!r} is not a section")
        node[leaf] = _parse_value(value)
    return from_dict(cls, raw, where=where)


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML ("true", "[a, b]", "3"); numbers YAML 1.1 misses ("1e-4") are fixed by _coerce."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (for the run directory's resolved config)."""
    return dataclasses.asdict(cfg)
