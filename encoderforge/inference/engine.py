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
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence, cast

import numpy as np
import torch
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.hardware.choose import Choice
from encoderforge.inference import precision as prec
from encoderforge.inference.cpu_pack import pack_for_cpu, packing_available
from encoderforge.inference.kernel_choice import choose_fp32_linear, choose_precision, linear_shapes
from encoderforge.model.checkpoint import load
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.model.padding import pad_packed
from encoderforge.tokenization import load_tokenizer

log = logging.getLogger(__name__)
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
        pack: on CPU, run fp32 linear layers through the kernel measured fastest on the model's shapes: pre-packed
            oneDNN (`inference.cpu_pack`, on its own copy of the encoder) or torch's F.linear
            (`inference.kernel_choice`; ENCODERFORGE_INFER_LINEAR=auto|onednn|torch forces one). False: no swap at all.
        precision: CPU GEMM precision. "fp32" (default: matches transformers to ~1e-5); "bf16": bf16 GEMMs (needs
            AVX512-BF16 or AMX and pack=True; LayerNorm, attention and residuals stay fp32), kept only if the
            sample embeddings pass the fidelity gate (`inference.precision`), else fp32 with `precision_note`;
            "auto": bf16 where the CPU has it, it passes the gate and measures faster than fp32, else fp32.
    Attributes:
        precision: what runs: "fp32" or "bf16" ("fp16"/"bf16" for a half model on CUDA).
        kernel: what runs the linear layers: "onednn-packed" or "torch".
        precision_note, kernel_note: why a request was not honoured ("" when it was).
        fidelity: bf16-vs-fp32 cosine of the gate, when it ran.
        choices: the `hardware.choose` records behind `kernel` and `precision` ("linear", "precision").
    Example:
        >>> eng = Engine.from_pretrained("path/to/minilm", precision="auto")
        >>> vecs = eng.embed(["a sentence", "another one"])   # (2, 384) float32, L2-normalized
        >>> eng.precision, eng.kernel                          # e.g. ("bf16", "onednn-packed")
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
        precision: prec.Precision = "fp32",
    ):
        prec.check_precision(precision)
        on_cpu = next(encoder.parameters()).device.type == "cpu"
        self.choices: dict[str, Choice] = {}
        self.kernel, self.kernel_note, self.precision_note = "torch", "", ""
        self.fidelity: prec.Fidelity | None = None
        own = self._fp32_kernel(encoder) if pack and on_cpu else encoder  # packing makes a copy
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
        self.precision = _DTYPE_NAMES.get(next(self.encoder.parameters()).dtype, "fp32")
        if precision != "fp32":
            self._set_precision(encoder, precision, pack=pack, on_cpu=on_cpu)

    # ---- kernel and precision (chosen once, at load) -------------------------------------------------

    def _fp32_kernel(self, encoder: Encoder) -> Encoder:
        """The encoder with its fp32 linears on the measured-fastest kernel (a packed copy, or `encoder` itself)."""
        shapes = linear_shapes(encoder)
        if not shapes or not packing_available():
            return encoder
        choice = self.choices["linear"] = choose_fp32_linear(shapes)
        self.kernel, self.kernel_note = choice.picked, choice.note
        return cast(Encoder, pack_for_cpu(encoder)) if choice.picked == "onednn-packed" else encoder

    def _set_precision(self, encoder: Encoder, precision: str, *, pack: bool, on_cpu: bool) -> None:
        """Switch to bf16 GEMMs if `precision` asks for it and this machine and model allow it (see the class doc)."""
        forced = precision == "bf16"
        if not on_cpu:
            if forced:
                raise EncoderforgeError(
                    "precision=bf16 is a CPU setting; on a GPU cast the encoder (encoder.bfloat16()) and use precision=fp32"
                )
            return
        if forced and not pack:
            raise EncoderforgeError("precision=bf16 runs through the packed oneDNN linears; use pack=True (or precision=fp32)")
        if not (prec.native_bf16() and packing_available()):
            if forced:
                raise prec.no_bf16_error()
            return  # auto: nothing to choose on this CPU
        shapes = linear_shapes(encoder)
        if not pack or not shapes:
            return
        if not forced:
            choice = self.choices["precision"] = choose_precision(shapes, self.kernel)
            if choice.picked != "bf16":
                return
        bf16 = cast(Encoder, pack_for_cpu(encoder, dtype=torch.bfloat16)).set_attention("varlen").eval()
        self.fidelity = self._gate(bf16)
        if not self.fidelity.passed:
            self.precision_note = (
                f"precision={precision}: bf16 embeddings of the sample texts have cosine to fp32 mean "
                f"{self.fidelity.mean:.5f} (min {self.fidelity.min:.5f}) < {prec.GATE_COSINE}; running fp32"
            )
            log.warning(self.precision_note)
            return
        self.encoder, self.precision, self.kernel = bf16, "bf16", "onednn-packed"

    def _gate(self, candidate: Encoder) -> prec.Fidelity:
        """Embed the sample texts with the current (fp32) encoder and with `candidate`; their cosine."""
        ids = [e.ids[: self.max_length] for e in self.tokenizer.encode_batch(prec.sample_texts())]
        ref = self.embed_encoded(EncodedTexts(ids=ids, truncated=[]))
        fp32, self.encoder = self.encoder, candidate
        try:
            got = self.embed_encoded(EncodedTexts(ids=ids, truncated=[]))
        finally:
            self.encoder = fp32
        return prec.fidelity(ref, got)

    @property
    def notes(self) -> list[str]:
        """Why a requested precision or kernel was not used: [] when every request was honoured."""
        return [n for n in (self.precision_note, self.kernel_note) if n]

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


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise EncoderforgeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise EncoderforgeError(
                f"texts[{i}] is {type(t).__name__} ({t!r:.40}), not a string; convert or drop it before encoding"
            )
