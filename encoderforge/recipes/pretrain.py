"""Pretraining (MLM or ELECTRA replaced-token detection), from scratch or continued from a checkpoint: wire
config -> data -> model -> task -> loop."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.config import load_config as _load
from encoderforge.config import to_dict
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.shards import load_documents
from encoderforge.fileio import atomic_file, prepare_run_dir, write_marker
from encoderforge.model import checkpoint
from encoderforge.model.config import EncoderConfig, preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks import Task
from encoderforge.tasks.masked import MLMTask
from encoderforge.tasks.objectives import OBJECTIVES, Objective, ObjectiveArgs, PretrainModel
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import barrier, setup, teardown
from encoderforge.training.fast_linear import use_training_linears
from encoderforge.training.loop import train


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
            raise EncoderforgeError(
                "model.anchor_weight anchors to the encoder a run continues from; set "
                "model.init_from (or set model.anchor_weight=0 to train from scratch)"
            )


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
                raise EncoderforgeError(
                    f"electra.{name}={getattr(self, name)} must be in (0, 1] (ELECTRA: width 0.25, depth 1.0)"
                )
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
            raise EncoderforgeError(
                "model.anchor_weight applies to continued MLM of the whole encoder; set "
                "model.anchor_weight=0 with objective electra or model.freeze_encoder=true"
            )


# keys a rerun may change and still continue the run: more steps, logging, checkpoint cadence, the bar
SAFE = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.trim_heap_every",
    "train.trim_heap_growth",
)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """A pretraining config from YAML (None = defaults) with `key.sub=value` overrides."""
    return _load(path, overrides, PretrainConfig)


def select_objective(cfg: PretrainConfig) -> tuple[Objective, ObjectiveArgs]:
    """The registered objective a config selects (`objective`; continued MLM with model.anchor_weight > 0 is
    anchored MLM) and the settings it reads."""
    name = "anchored_mlm" if cfg.objective == "mlm" and cfg.model.anchor_weight else cfg.objective
    e = cfg.electra
    return OBJECTIVES[name], ObjectiveArgs(
        generator_width=e.generator_width,
        generator_depth=e.generator_depth,
        disc_weight=e.disc_weight,
        anchor_weight=cfg.model.anchor_weight,
    )


def build_model(cfg: PretrainConfig, vocab_size: int) -> PretrainModel:
    """A fresh preset encoder with the objective's fresh heads (MLM head, or ELECTRA generator + RTD head), or a
    checkpoint's encoder (and its heads if it has them)."""
    m = cfg.model
    obj, args = select_objective(cfg)
    if m.init_from:
        model = obj.continued(m.init_from, args)
        if m.overrides:
            raise EncoderforgeError(
                "model.overrides apply to from-scratch presets only; remove them when using "
                "model.init_from (the checkpoint's config.json fixes the architecture)"
            )
    else:
        if "vocab_size" in m.overrides:
            raise EncoderforgeError("model.overrides.vocab_size is set by the tokenizer; remove it")
        known = set(EncoderConfig.__dataclass_fields__)
        unknown = sorted(set(m.overrides) - known)
        if unknown:
            raise EncoderforgeError(f"model.overrides: unknown field(s) {unknown}; known fields are {sorted(known)}")
        model = obj.fresh(Encoder(preset(m.preset, vocab_size=vocab_size, **m.overrides)), args)
    ecfg: EncoderConfig = model.encoder.cfg
    if ecfg.vocab_size < vocab_size:
        raise EncoderforgeError(
            f"the tokenizer has {vocab_size} tokens but the model only {ecfg.vocab_size} embeddings; "
            "use the checkpoint's own tokenizer (model.tokenizer) or extend the vocabulary first"
        )
    if cfg.data.max_len > ecfg.max_position:
        raise EncoderforgeError(f"data.max_len={cfg.data.max_len} exceeds the model's max_position={ecfg.max_position}")
    return model


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run MLM or ELECTRA pretraining as configured; launch under torchrun for DDP.

    Args:
        cfg: objective, model, data, masking, electra and training sections (see configs/pretrain-*.yaml).
    Returns:
        the final metrics (held-out MLM loss/accuracy, or generator/discriminator metrics for ELECTRA, steps,
        tokens); the run directory holds metrics.jsonl, metrics.json, config.yaml, checkpoints/ and model/ (our
        checkpoint format: the encoder, i.e. the discriminator for ELECTRA, with the heads as extra tensors).
    """
    if not cfg.data.shards:
        raise EncoderforgeError(
            "data.shards is not set; prepare a corpus with `encoderforge data prepare` and pass --set data.shards=DIR"
        )
    tok_src = cfg.model.tokenizer or cfg.model.init_from
    if not tok_src:
        raise EncoderforgeError("model.tokenizer is required when training from scratch (tokenizer.json or vocab.txt)")
    tok_path = resolve_model(tok_src)  # a zoo name ("minilm-l6") -> its directory
    tok = load_tokenizer(tok_path)
    tok_dir = tok_path if tok_path.is_dir() else tok_path.parent
    train_docs = load_documents(cfg.data.shards, "train", tokenizer=tok)
    try:
        eval_docs = load_documents(cfg.data.shards, "eval", tokenizer=tok)
    except EncoderforgeError:
        eval_docs = None  # prepared with --eval-fraction 0: no held-out evaluation
    run = Path(cfg.train.out_dir)
    record = to_dict(cfg)
    action = prepare_run_dir(run, "pretrain", record, inputs=[cfg.data.shards, tok_path], safe_changes=SAFE)
    if action == "done" and (run / "metrics.json").is_file():
        print(f"{run}: already finished with this config; nothing to do (more train.steps continues it)", file=sys.stderr)
        return json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    dist = setup(cfg.train.device)
    try:
        torch.manual_seed(cfg.train.seed)  # same initialisation on every rank
        model = build_model(cfg, tok.get_vocab_size())
        if cfg.model.freeze_encoder:
            model.encoder.requires_grad_(False)
        mlm = MLMTask(
            train_docs,
            eval_docs,
            MaskVocab.from_tokenizer(tok),
            cfg.masking,
            max_len=cfg.data.max_len,
            batch_rows=cfg.train.batch_rows,
            micro_rows=cfg.train.micro_rows,
            eval_rows=cfg.data.eval_rows,
            seed=cfg.train.seed,
            rank=dist.rank,
            world=dist.world,
        )
        # every objective reads MLM's rows and masks (ELECTRA's generator then replaces the masked tokens)
        obj, args = select_objective(cfg)
        task: Task = obj.task(mlm, model, args, lambda enc: _frozen_start(enc, dist.device))
        if dist.main:
            run.mkdir(parents=True, exist_ok=True)
            write_marker(run, "pretrain", "running", record)
            with atomic_file(run / "config.yaml") as f:
                yaml.safe_dump(record, f, sort_keys=False)
        final = train(model, task, cfg.train, dist, tokenizer_dir=tok_dir)
        if dist.main:
            checkpoint.save(model.encoder, run / "model", tokenizer_dir=tok_dir, extra=_heads(model))
            write_marker(run, "pretrain", "finished", record)
        # every rank leaves together, after rank 0 has saved. (A rare SIGABRT of a rank at exit in torch's gloo
        # teardown, "terminate called without an active exception", was seen in CI before and after this barrier:
        # it comes after every output is written; tests/training/run_helpers.py names it.)
        barrier(dist)
        return final
    finally:
        teardown(dist)


def _frozen_start(encoder: Encoder, device: torch.device) -> Encoder:
    """A frozen copy of the encoder a continued run starts from (the anchor's reference). On resume the model is
    rebuilt from model.init_from before the checkpoint is loaded, so this is the start again, not the resumed state."""
    start = copy.deepcopy(encoder).to(device)
    if device.type == "cpu":
        use_training_linears(start)  # the same GEMMs the loop gives the trained model
    return start


def _heads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything but the encoder ("mlm.*"; or "rtd.*" and "generator.*"), saved beside it so a run can continue."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
