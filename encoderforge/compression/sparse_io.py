"""Sparse weights on disk: a pruned model's state with each sparse tensor stored as a bitmask plus its nonzero values.

Why our own: the size win of pruning (oBERT reports 10x smaller models in MB) only shows on disk if zeros are not
written; safetensors has no sparse tensors, and torch's sparse formats are pickled or 8x larger per index (int64 COO
indices). A packed bitmask costs 1 bit per weight, so at 80% sparsity a weight takes 0.2 x 32 + 1 = 7.4 bits.

    <dir>/
      model.sparse.safetensors  dense tensors under their names; a sparse one as "<name>:mask" (uint8,
                                numpy.packbits of the row-major nonzero pattern, big bit order) and
                                "<name>:values" (its nonzeros in row-major order, float32 or float16)
      sparse_index.json         {"format": "encoderforge-sparse", "version": 1, "tensors": {name: entry}}, entries in
                                state_dict order: {"encoding": "dense"} or {"encoding": "bitmask", "shape",
                                "dtype", "values", "nonzero"}

A tensor is stored sparse when that is smaller (floating point, mask + values < dense bytes); the rest stay dense.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir

WEIGHTS, INDEX = "model.sparse.safetensors", "sparse_index.json"
FORMAT, VERSION = "encoderforge-sparse", 1
ValueType = Literal["fp32", "fp16"]
VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass(frozen=True)
class SparseSize:
    dense_mb: float  # the state as dense tensors, in MB (1e6 bytes)
    sparse_mb: float  # the files written

    @property
    def ratio(self) -> float:
        return self.dense_mb / max(self.sparse_mb, 1e-12)


def _state(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    items = model.state_dict() if isinstance(model, nn.Module) else model
    return {k: v.detach().cpu().contiguous() for k, v in items.items()}


def write_sparse(model: nn.Module | Mapping[str, torch.Tensor], directory: str | Path, *, values: ValueType = "fp32") -> None:
    """Write the two files into an existing `directory` (not atomic: call inside `fileio.atomic_dir`, as `save_sparse`).

    Args:
        model: a model or a state dict.
        directory: where to write.
        values: dtype of a sparse tensor's stored nonzeros ("fp16" halves them, lossy; dense tensors keep theirs).
    """
    if values not in VALUE_DTYPES:
        raise EncoderforgeError(f"values={values!r}; use 'fp32' (exact) or 'fp16' (half the bytes, rounded)")
    vtype = VALUE_DTYPES[values]
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    for name, t in _state(model).items():
        nonzero = t != 0
        nnz = int(nonzero.sum())
        if not t.is_floating_point() or (t.numel() + 7) // 8 + nnz * vtype.itemsize >= t.numel() * t.element_size():
            tensors[name], index[name] = t, {"encoding": "dense"}
            continue
        bits = np.packbits(nonzero.flatten().numpy())  # (ceil(n / 8),) uint8
        tensors[f"{name}:mask"] = torch.from_numpy(bits)
        tensors[f"{name}:values"] = t.flatten()[nonzero.flatten()].to(vtype)  # (nnz,)
        index[name] = {
            "encoding": "bitmask",
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "values": str(vtype).removeprefix("torch."),
            "nonzero": nnz,
        }
    directory = Path(directory)
    save_file(tensors, str(directory / WEIGHTS))
    (directory / INDEX).write_text(json.dumps({"format": FORMAT, "version": VERSION, "tensors": index}, indent=1))


def save_sparse(
    model: nn.Module | Mapping[str, torch.Tensor], out: str | Path, *, values: ValueType = "fp32", overwrite: bool = True
) -> SparseSize:
    """Save a (pruned) model's state as a sparse directory, atomically (a temporary sibling renamed into place).

    Args:
        model: a model or a state dict.
        out: the directory to write (replaced when `overwrite`).
        values: "fp32" (load_sparse gives back exactly the saved tensors) or "fp16" nonzeros.
        overwrite: replace an existing `out`.
    Returns:
        SparseSize: MB as dense tensors vs MB of the files written.
    Example:
        >>> prune_once(encoder, 0.8); save_sparse(encoder, "runs/sparse80")   # SparseSize(dense_mb=90.3, sparse_mb=...)
    """
    state = _state(model)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_sparse(state, tmp, values=values)
    dense = sum(t.numel() * t.element_size() for t in state.values())
    written = sum(p.stat().st_size for p in (Path(out) / WEIGHTS, Path(out) / INDEX))
    return SparseSize(dense_mb=dense / 1e6, sparse_mb=written / 1e6)


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a directory written by `save_sparse` back into dense tensors (in the saved state_dict order).

    Example:
        >>> encoder.load_state_dict(load_sparse("runs/sparse80"))
    """
    path = Path(path)
    try:
        meta = json.loads((path / INDEX).read_text(encoding="utf-8"))
        stored = load_file(str(path / WEIGHTS))
    except (OSError, ValueError) as e:
        raise EncoderforgeError(
            f"{path}: unreadable sparse model ({INDEX} + {WEIGHTS}: {e}); write it with save_sparse"
        ) from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise EncoderforgeError(f"{path / INDEX}: not an {FORMAT} v{VERSION} index; write it with save_sparse")
    out: dict[str, torch.Tensor] = {}
    for name, entry in meta["tensors"].items():
        if entry["encoding"] == "dense":
            out[name] = stored[name]
            continue
        n = int(np.prod(entry["shape"], dtype=np.int64))
        bits = torch.from_numpy(np.unpackbits(stored[f"{name}:mask"].numpy(), count=n).astype(bool))  # (n,)
        dense = torch.zeros(n, dtype=getattr(torch, entry["dtype"]))
        dense[bits] = stored[f"{name}:values"].to(dense.dtype)
        out[name] = dense.view(entry["shape"])
    return out
