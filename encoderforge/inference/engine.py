"""The padding-free inference engine: texts -> fast batch tokenization -> token-budget batches ->
unpadded forward -> pooled vectors or token states, returned in input order. `Engine.forward_batches` is the public
batched forward that task heads (recipes/predict.py) run on.

Shape legend: B sequences in a batch, N real tokens in a batch, T longest sequence of a batch, C hidden size.
Why it is fast on CPU (measured in docs/results.md): sequences are sorted by length and packed into
batches under a token budget, and the encoder runs every GEMM on the N real tokens only (varlen backend),
so no FLOP is spent on padding whatever order the texts arrive in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence, cast

import numpy as np
import torch
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.inference.cpu_pack import pack_for_cpu
from encoderforge.model.checkpoint import load
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.model.padding import pad_packed
from encoderforge.tokenization import load_tokenizer

Pooling = Literal["mean", "cls"]
# Token budget per forward pass. Measured (docs/results.md): 1,024-4,096 are within noise of each other on CPU
# and 2,048 still fits 4 sequences of 512; at 8,192 the activations outgrow glibc malloc's reuse threshold
# (32 MB), so every batch pays fresh page faults and throughput halves.
DEFAULT_MAX_TOKENS = 2048


@dataclass
class HiddenBatch:
    """One token-budget batch of `Engine.forward_batches`: what a head reads, and which inputs it holds."""

    index: list[int]  # (B,) positions of this batch's sequences in the caller's list
    hidden: torch.Tensor  # (B, T, C) last hidden states, zeros at padding
    mask: torch.Tensor  # (B, T) bool, True = real token


@dataclass
class EncodedTexts:
    """Token ids of every text (with [CLS]/[SEP]) and how many texts were truncated."""

    ids: list[list[int]]
    truncated: list[int]  # input indices of texts cut at max_length


class Engine:
    """Encode texts with an encoder, wasting no compute on padding.

    Args:
        encoder: any `Encoder` (switched to the unpadded `varlen` backend).
        tokenizer: a `tokenizers.Tokenizer` (see `encoderforge.tokenization.load_tokenizer`).
        max_tokens: token budget per forward pass: the batch's B * max_len never exceeds it, which caps
            activation memory whatever the number of texts.
        max_length: longest sequence in tokens (incl. [CLS]/[SEP]); default the model's max_position.
        truncate: cut longer texts at max_length (listed in `EncodedTexts.truncated`); if False they raise.
        pack: on CPU, run fp32 linear layers through pre-packed oneDNN kernels (`inference.cpu_pack`); the
            engine then works on its own copy of the encoder.
    Example:
        >>> eng = Engine.from_pretrained("path/to/minilm")
        >>> vecs = eng.embed(["a sentence", "another one"])   # (2, 384) float32, L2-normalized
    """

    def __init__(
        self,
        encoder: Encoder,
        tokenizer,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_length: int | None = None,
        truncate: bool = True,
        pack: bool = True,
    ):
        on_cpu = next(encoder.parameters()).device.type == "cpu"
        own = pack_for_cpu(encoder) if pack and on_cpu else encoder  # packing makes a copy (when oneDNN is there)
        if own is encoder:
            # the engine's own module tree over the same tensors: the caller's encoder keeps its attention backend
            # and training mode, and no weight memory is duplicated (e.g. a model on the GPU)
            own = copy.deepcopy(encoder, memo={id(t): t for t in (*encoder.parameters(), *encoder.buffers())})
        self.encoder = cast(Encoder, own).set_attention("varlen").eval()
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())  # truncation settings below stay the engine's
        self.max_length = int(max_length or encoder.cfg.max_position)
        if self.max_length > encoder.cfg.max_position and encoder.cfg.position == "learned":
            raise EncoderforgeError(
                f"max_length={self.max_length} exceeds the model's max_position={encoder.cfg.max_position}; lower --max-length"
            )
        if max_tokens < self.max_length:
            raise EncoderforgeError(
                f"max_tokens={max_tokens} is smaller than one sequence of max_length="
                f"{self.max_length}; raise --max-tokens or lower --max-length"
            )
        self.max_tokens = int(max_tokens)
        self.truncate = truncate
        if truncate:  # the Rust tokenizer truncates (keeping [CLS]/[SEP]) and reports what overflowed
            self.tokenizer.enable_truncation(self.max_length)
        else:
            self.tokenizer.no_truncation()

    @property
    def device(self) -> torch.device:
        """Where the encoder lives; batches are built there (CUDA: the varlen FlashAttention kernel in half precision)."""
        return next(self.encoder.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw) -> "Engine":
        """Load an encoderforge or Hugging Face BERT checkpoint directory with its tokenizer files."""
        loaded = load(path)
        return cls(loaded.encoder, load_tokenizer(path), **kw)

    # ---- tokenization and batching -------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> EncodedTexts:
        """Batch-tokenize in Rust; keep [CLS] ... [SEP] and cut at max_length (explicitly reported)."""
        _check_texts(texts)
        ids, truncated = [], []
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            if enc.overflowing:
                truncated.append(i)
            elif len(enc.ids) > self.max_length:
                raise EncoderforgeError(
                    f"text {i} has {len(enc.ids)} tokens > max_length={self.max_length}; enable truncation or raise --max-length"
                )
            ids.append(enc.ids)
        return EncodedTexts(ids=ids, truncated=truncated)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group indices longest-first so each batch's B * max_len stays within the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]  # longest in the batch (sorted descending)
            if cur and (len(cur) + 1) * width > self.max_tokens:
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    # ---- forward -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward_batches(self, ids: Sequence[Sequence[int]]) -> Iterator[HiddenBatch]:
        """Token id sequences (each with its [CLS]/[SEP], at most max_length) -> one HiddenBatch per token-budget
        batch, longest sequences first; `index` maps rows back to input order.

        Example:
            >>> for b in eng.forward_batches(eng.tokenize(texts).ids):
            ...     logits[b.index] = head(b.hidden, b.mask)   # (B, L)
        """
        dev = self.device
        for idx in self.batches([len(s) for s in ids]):
            lengths = torch.tensor([len(ids[i]) for i in idx], device=dev)  # (B,)
            flat = torch.tensor([t for i in idx for t in ids[i]], dtype=torch.long, device=dev)  # (N,)
            out = self.encoder.forward_packed(flat, lengths)  # hidden (N, C)
            grid = pad_packed(out.hidden, out.layout)  # (B, T, C), (B, T)
            yield HiddenBatch(index=idx, hidden=grid.hidden, mask=grid.mask)

    def embed(self, texts: Sequence[str], *, pooling: Pooling = "mean", normalize: bool = True) -> np.ndarray:
        """Texts -> (len(texts), C) float32 vectors in input order (mean pooling = sentence-transformers)."""
        return self.embed_encoded(self.tokenize(texts), pooling=pooling, normalize=normalize)

    def embed_encoded(self, encoded: EncodedTexts, *, pooling: Pooling = "mean", normalize: bool = True) -> np.ndarray:
        """Like `embed`, for texts already passed through `tokenize`."""
        ids = encoded.ids
        out = np.zeros((len(ids), self.encoder.cfg.hidden_size), dtype=np.float32)
        for b in self.forward_batches(ids):
            vec = pool(b.hidden, b.mask, pooling)  # (B, C)
            if normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[b.index] = vec.float().cpu().numpy()
        return out

    def token_states(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Texts -> one (L_i, C) array of last hidden states per text, in input order."""
        ids = self.tokenize(texts).ids
        out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(ids)
        for b in self.forward_batches(ids):
            for row, i in enumerate(b.index):
                out[i] = b.hidden[row, : len(ids[i])].float().cpu().numpy()
        return out


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise EncoderforgeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise EncoderforgeError(
                f"texts[{i}] is {type(t).__name__} ({t!r:.40}), not a string; convert or drop it before encoding"
            )
