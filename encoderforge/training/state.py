"""Checkpoint and exact resume. A training checkpoint is a directory, written atomically, never pickled:

    step-00000100/
      config.json          {"format": "encoderforge", "model": EncoderConfig} when the model has an `.encoder`
      model.safetensors    the full model state ("encoder.*", plus head tensors such as "mlm.*"), so
                           `encoderforge.model.checkpoint.load` opens it directly (heads come back as `extra`)
      optimizer.safetensors  AdamW moments, flattened as "state.<param index>.<name>"
      train_state.json     step, tokens seen, data position, optimizer param groups

What is not stored is recomputed: the learning rate is `lr_at(step)`, the data stream and masking are pure
functions of (seed, row index), and dropout's RNG is reseeded from (seed, step, rank) at every step.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir
from encoderforge.model.checkpoint import FORMAT, copy_tokenizer_files


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]:
        """{"weights": {name: tensor}, "meta": JSON-able values}."""
        ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # input tokens processed over all processes
    rows: int = 0  # data position: rows of the stream consumed (== step * batch_rows)


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    *,
    keep: int = 2,
    tokenizer_dir: str | Path | None = None,
    extra: Stateful | None = None,
) -> Path:
    """Write `run_dir/checkpoints/step-XXXXXXXX` atomically, then delete all but the newest `keep`.

    Args:
        run_dir: the run directory.
        model: the unwrapped model (not the DDP wrapper).
        optimizer: its optimizer.
        state: counters to restore.
        keep: checkpoints to keep.
        tokenizer_dir: copy tokenizer files in, so the checkpoint is self-contained.
        extra: another stateful part of the run (e.g. the best-weights keeper): its tensors go to
            extra.safetensors, its plain values into train_state.json.
    Returns:
        the checkpoint directory.
    """
    root = Path(run_dir) / "checkpoints"
    path = root / f"step-{state.step:08d}"
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        encoder = getattr(model, "encoder", None)
        if encoder is not None and hasattr(encoder, "cfg"):
            (tmp / "config.json").write_text(
                json.dumps({"format": FORMAT, "version": 1, "model": encoder.cfg.to_dict()}, indent=2)
            )
        copy_tokenizer_files(tokenizer_dir, tmp)
        extra_meta = None
        if extra is not None:
            sd = extra.state_dict()
            save_file({k: v.contiguous() for k, v in sd["weights"].items()}, str(tmp / "extra.safetensors"))
            extra_meta = sd["meta"]
        (tmp / "train_state.json").write_text(
            json.dumps(
                {**asdict(state), "param_groups": opt["param_groups"], "optimizer_scalars": scalars, "extra": extra_meta},
                indent=2,
            )
        )
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (atomic writes mean a listed one is always complete)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, extra: Stateful | None = None
) -> TrainState:
    """Restore model (and optimizer, and `extra`'s state) in place from a checkpoint directory; returns the counters."""
    path = Path(path)
    try:
        meta = json.loads((path / "train_state.json").read_text(encoding="utf-8"))
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise EncoderforgeError(f"{path}: unreadable training checkpoint ({e}); delete it to resume from an older one") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise EncoderforgeError(
            f"{path}: checkpoint does not match the model (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}); the run directory belongs to another config; use a new train.out_dir"
        )
    if optimizer is not None:
        tensors = load_file(str(path / "optimizer.safetensors"))
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
        for key, value in meta.get("optimizer_scalars", {}).items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        groups = meta["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if extra is not None and meta.get("extra") is not None:
        extra.load_state_dict({"weights": load_file(str(path / "extra.safetensors")), "meta": meta["extra"]})
    return TrainState(step=meta["step"], tokens=meta["tokens"], rows=meta["rows"])
