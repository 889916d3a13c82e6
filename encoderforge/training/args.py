"""How to train: the loop's hyperparameters as one typed dataclass (litgpt `args.py`); YAML loading is config.py's.

Every field is validated in `__post_init__` with a message naming the field; an unknown field in a YAML file
or an override is an error that names it and lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from encoderforge import EncoderforgeError
from encoderforge.training.precision import check_precision
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
        schedule: "linear" | "cosine" | "wsd" | "constant" | "range" (the LR range test's ramp).
        min_lr_ratio: final learning rate as a fraction of lr.
        decay_fraction: for "wsd", the share of steps spent decaying.
        weight_decay: AdamW decay on matrices (never on biases, LayerNorm weights or other vectors).
        beta1, beta2, eps: AdamW moments (RoBERTa: 0.9, 0.98, 1e-6).
        grad_clip: clip the global gradient norm to this (0 = off).
        precision: "auto" (bf16 autocast on CUDA GPUs with bf16, fp32 on CPU) | "fp32" | "bf16" (autocast; on CPU
            only with AVX512-BF16 or AMX). Weights and optimizer state stay fp32 either way.
        device: "auto" | "cpu" | "cuda".
        seed: seeds initialisation, data order, masking and dropout.
        log_every, eval_every, save_every: in optimizer steps (0 = never; a final eval and save always happen).
        keep_checkpoints: how many step checkpoints to keep.
        out_dir: the run directory (config, metrics.jsonl, checkpoints, final model).
        resume: continue from the latest checkpoint in out_dir if there is one.
        progress: show a tqdm progress bar.
        trim_heap_every: on CPU, check every this many steps and after each evaluation whether the heap grew, and
            return freed heap memory to the OS if so (glibc malloc_trim; 0 = never). Caps RSS when batch shapes vary.
        trim_heap_growth: trim only when RSS exceeds a step's working set (RSS at the first check) by this fraction (each trim
            costs the next steps their page faults: trimming every 5 steps made fine-tuning 26% slower).
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
    trim_heap_growth: float = 0.5

    def __post_init__(self) -> None:
        for name in ("steps", "batch_rows"):
            if getattr(self, name) <= 0:
                raise EncoderforgeError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in (
            "micro_rows",
            "warmup_steps",
            "log_every",
            "eval_every",
            "save_every",
            "grad_clip",
            "weight_decay",
            "trim_heap_every",
            "trim_heap_growth",
        ):
            if getattr(self, name) < 0:
                raise EncoderforgeError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise EncoderforgeError(f"train.lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise EncoderforgeError(f"train.schedule={self.schedule!r}; use one of {list(SCHEDULES)}")
        if self.schedule == "range" and not 0 < self.min_lr_ratio < 1:
            raise EncoderforgeError(
                f"train.schedule=range ramps up from min_lr_ratio * lr: set 0 < min_lr_ratio < 1, got {self.min_lr_ratio}"
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise EncoderforgeError(f"train.precision={self.precision!r}; use 'auto', 'fp32' or 'bf16'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise EncoderforgeError(f"train.device={self.device!r}; use 'auto', 'cpu' or 'cuda'")
        check_precision(self.precision, self.device)  # bf16 on a CPU without native bf16: fail before any work
        if self.keep_checkpoints < 1:
            raise EncoderforgeError("train.keep_checkpoints must be >= 1 (resume needs one)")
