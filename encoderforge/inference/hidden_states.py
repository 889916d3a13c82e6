"""Other engines behind the one prediction interface (tasks.spec.HiddenStates: a tokenizer and `forward_batches`),
so a task head predicts from ONNX Runtime or transformers' BertModel exactly as it does from our Engine. The
compression report scores and times every model through the same task code this way: only the encoder differs.

Both run padded batches, as their users do: ONNX Runtime on length-sorted batches (what a careful user does),
transformers in arrival order (what `pipeline()` and most serving code do). Shapes: B rows, T longest row, C hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError, require
from encoderforge.inference.engine import HiddenBatch
from encoderforge.inference.onnx_export import onnx_session, run_onnx

Order = Literal["sorted", "arrival"]


def _padded(ids: Sequence[Sequence[int]], idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) int64 ids and mask of the rows `idx`, right-padded with 0."""
    T = max(len(ids[i]) for i in idx)
    grid = np.zeros((len(idx), T), dtype=np.int64)
    mask = np.zeros((len(idx), T), dtype=np.int64)
    for r, i in enumerate(idx):
        grid[r, : len(ids[i])], mask[r, : len(ids[i])] = ids[i], 1
    return grid, mask


def batch_order(lengths: Sequence[int], batch: int, order: Order) -> list[list[int]]:
    """Row indices in batches of `batch`: longest first ("sorted") or as they came ("arrival")."""
    rows = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if order == "sorted" else list(range(len(lengths)))
    return [rows[i : i + batch] for i in range(0, len(rows), batch)]


class OnnxStates:
    """An ONNX file exported with pooling="none" (last_hidden_state (B, T, C)) as a HiddenStates.

    Example:
        >>> states = OnnxStates("model-int8.onnx", load_tokenizer(run / "model"), max_length=128)
        >>> TASKS["classify"].predict(states, head, meta, texts)
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        threads: int = 1,
        batch: int = 32,
        order: Order = "sorted",
    ):
        # no spin-waiting: the compression report interleaves this session with torch runners on the same cores, and
        # spinning pool threads slow the torch runner that follows (our engine's single-text p50 right after an ORT call:
        # 56-73 ms with spinning vs 40-48 ms parked, 2 threads, a busy 2-core box)
        self.session = onnx_session(path, threads=threads, spinning=False)
        if self.session.get_outputs()[0].name != "last_hidden_state":
            raise EncoderforgeError(f"{path}: outputs {self.session.get_outputs()[0].name!r}; export it with --pooling none")
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.enable_truncation(max_length)
        self.batch, self.order = batch, order

    def forward_batches(self, ids: Sequence[Sequence[int]]) -> Iterator[HiddenBatch]:
        for idx in batch_order([len(s) for s in ids], self.batch, self.order):
            grid, mask = _padded(ids, idx)
            hidden = torch.from_numpy(run_onnx(self.session, grid, mask))  # (B, T, C)
            yield HiddenBatch(index=idx, hidden=hidden, mask=torch.from_numpy(mask).bool())


class TransformersStates:
    """transformers' BertModel (sdpa attention) loaded from a Hugging Face directory, as a HiddenStates."""

    def __init__(self, hf_dir: str | Path, tokenizer: Tokenizer, *, max_length: int, batch: int = 32, order: Order = "arrival"):
        transformers = require("transformers", "hf")
        self.model = transformers.BertModel.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.enable_truncation(max_length)
        self.batch, self.order = batch, order

    @torch.inference_mode()
    def forward_batches(self, ids: Sequence[Sequence[int]]) -> Iterator[HiddenBatch]:
        for idx in batch_order([len(s) for s in ids], self.batch, self.order):
            grid, mask = (torch.from_numpy(a) for a in _padded(ids, idx))
            hidden = self.model(input_ids=grid, attention_mask=mask).last_hidden_state  # (B, T, C)
            yield HiddenBatch(index=idx, hidden=hidden, mask=mask.bool())
