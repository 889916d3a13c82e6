"""Weight-only group-wise 4-bit quantization, for size on disk and download, not for speed.

Every nn.Linear weight and the word-embedding table are stored as 4-bit codes in groups of `group_size` consecutive
input features (Shen et al. 2020, Q-BERT: one scale per group instead of per matrix), asymmetric: per group an fp16
scale and a uint8 zero point, two codes per byte. Everything else (LayerNorms, biases, position and segment
embeddings) stays fp32. At load time the weights are dequantized into a plain fp32 `Encoder`, so every engine
(torch, ONNX export, dynamic int8 on top) runs it unchanged; nothing gets faster.

Choices, measured on the real MiniLM-L6, 256 WNUT tweets, mean-pooled cosine to fp32 (mean / min):
- asymmetric beats symmetric at 4 bits (128: 0.949 / 0.907 vs 0.923 / 0.833): a group's weights are rarely
  centred on zero, and symmetric codes waste one of only 16 levels;
- the 4-bit word-embedding table is almost free (0.949 -> 0.947) and is half of the fp32 bytes (44.7 of 86.6 MiB);
- group 128 -> 0.947 / 12.1 MiB, 64 -> 0.960, 32 -> 0.968 / 13.6 MiB; MSE-searched clipping per group gained
  under 0.01 and is not done. Post-training 4 bits cost MiniLM ~5 cosine points (Q-BERT's 4-bit results are
  after quantization-aware fine-tuning): hence a gate at 0.94 that catches a broken file, not a quality promise.
  Q-BERT's other idea, mixed precision, is `keep_8bit`: qkv and fc1 at 8 bits -> 0.983 / 15.0 MiB, every
  Linear at 8 bits (embeddings 4) -> 0.998 / 17.2 MiB.

Shapes: a weight (out, in) is zero-padded to (out, G * group_size) when group_size does not divide `in` (zeros never
widen a group's range, so the last group is simply shorter); codes (out, G * group_size / 2) uint8 (4 bits, low
nibble first) or (out, G * group_size) (8 bits); scale (out, G) fp16; zero (out, G) uint8.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save
from tokenizers import Tokenizer
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.packed_file import incomplete_as_error, read_packed
from encoderforge.compression.quantize import int8_fidelity
from encoderforge.fileio import atomic_file, check_output
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder

FORMAT = "encoderforge-int4"
INT4_MIN_MEAN_COSINE = 0.94  # MiniLM-L6 keeps 0.947 at group 128 (module docstring); below this the file is broken
EMBEDDING = "embeddings.tok.weight"  # the word-embedding table: half of a small encoder's bytes
_FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal fp16: the scale of an all-zero group


@dataclass(frozen=True)
class QuantizedWeight:
    """One group-wise quantized (out, in) matrix; shapes in the module docstring."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    shape: tuple[int, int]
    bits: int


@dataclass
class Int4State:
    """A packed encoder: quantized matrices by state-dict name, the other tensors in fp32, and its config."""

    config: EncoderConfig
    group_size: int
    weights: dict[str, QuantizedWeight]
    rest: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Int4Report:
    """What `export_int4` wrote and how closely the dequantized encoder matches fp32."""

    path: Path
    size_mb: float  # the file, MiB
    fp32_mb: float  # the same parameters in fp32, MiB
    mean_cosine: float  # mean-pooled embeddings, dequantized int4 vs fp32
    min_cosine: float
    n_texts: int
    seconds: float


def quantize_weight(w: torch.Tensor, group_size: int, *, bits: int = 4) -> QuantizedWeight:
    """Asymmetric group-wise quantization of an (out, in) matrix along `in`; every weight comes back within half a
    step (its group's scale / 2), since the range always holds 0 and the fp16 scale is rounded up, never down."""
    if group_size <= 0 or group_size % 2:
        raise EncoderforgeError(
            f"group_size={group_size}: must be a positive even number (two 4-bit codes share a byte), e.g. 64 or 128"
        )
    out, inn = w.shape
    groups = math.ceil(inn / group_size)
    wg = nn.functional.pad(w.detach().float(), (0, groups * group_size - inn)).reshape(out, groups, group_size)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)  # (out, G)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax * (1 + 2**-10)).clamp(min=_FP16_TINY).half()  # x (1 + 2^-10): fp16 rounding only grows it
    s = scale.float()[..., None]  # (out, G, 1)
    zero = torch.round(-lo[..., None] / s).clamp(0, qmax)
    codes = (torch.round(wg / s) + zero).clamp(0, qmax).to(torch.uint8).reshape(out, groups * group_size)
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)  # (out, G * group_size / 2)
    return QuantizedWeight(codes, scale, zero[..., 0].to(torch.uint8), (out, inn), bits)


def dequantize_weight(q: QuantizedWeight, group_size: int) -> torch.Tensor:
    """The fp32 (out, in) matrix a `QuantizedWeight` stands for."""
    codes = q.codes
    if q.bits == 4:
        codes = torch.stack([codes & 0xF, codes >> 4], dim=-1).flatten(1)  # (out, G * group_size)
    out, inn = q.shape
    wg = (codes.float().reshape(out, -1, group_size) - q.zero.float()[..., None]) * q.scale.float()[..., None]
    return wg.reshape(out, -1)[:, :inn].contiguous()


def quantize_int4(encoder: Encoder, group_size: int = 128, *, keep_8bit: Sequence[str] = ()) -> Int4State:
    """Pack `encoder` (not modified): every nn.Linear weight and the word-embedding table in group-wise 4 bits.

    Args:
        encoder: an fp32 `Encoder`.
        group_size: consecutive input features sharing one scale and zero point (even; need not divide `in`).
        keep_8bit: substrings of weight names stored at 8 bits instead (Q-BERT's mixed precision), e.g. ("qkv", "fc1").
    Returns:
        an Int4State; `save_int4` writes it, `dequantize_int4` turns it back into an fp32 Encoder.
    Example:
        >>> save_int4(quantize_int4(load("minilm-l6").encoder), "minilm.int4.safetensors")
    """
    targets = {f"{n}.weight" for n, m in encoder.named_modules() if isinstance(m, nn.Linear)} | {EMBEDDING}
    for key in keep_8bit:
        if not any(key in t for t in targets):
            raise EncoderforgeError(
                f"keep_8bit entry {key!r} matches no quantized weight; names look like 'layers.0.mlp.fc1.weight'"
            )
    weights, rest = {}, {}
    for name, t in encoder.state_dict().items():
        if name in targets:
            weights[name] = quantize_weight(t, group_size, bits=8 if any(k in name for k in keep_8bit) else 4)
        else:
            rest[name] = t.detach().float().clone()
    return Int4State(encoder.cfg, group_size, weights, rest)


def dequantize_int4(state: Int4State) -> Encoder:
    """An fp32 `Encoder` (eval mode) with the dequantized weights: every engine runs it as any other encoder."""
    enc = Encoder(state.config)
    full = {**state.rest, **{n: dequantize_weight(q, state.group_size) for n, q in state.weights.items()}}
    enc.load_state_dict(full, strict=True)
    return enc.eval()


def save_int4(state: Int4State, path: str | Path) -> Path:
    """Write `state` to one safetensors file, atomically (a failed write leaves nothing at `path`)."""
    out = check_output(path, expect="file", flag="path")
    if out.suffix != ".safetensors":
        raise EncoderforgeError(f"{out}: the file name must end in .safetensors, e.g. {out.with_suffix('.int4.safetensors')}")
    tensors = dict(state.rest)
    for name, q in state.weights.items():
        tensors.update({f"{name}.codes": q.codes, f"{name}.scale": q.scale, f"{name}.zero": q.zero})
    meta = {
        "format": FORMAT,
        "group_size": str(state.group_size),
        "model": json.dumps(state.config.to_dict()),
        "quantized": json.dumps({n: {"shape": list(q.shape), "bits": q.bits} for n, q in state.weights.items()}),
    }
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    with atomic_file(out, "wb") as f:
        f.write(data)
    return out


def load_int4(path: str | Path) -> Encoder:
    """Read a file written by `save_int4` and return the dequantized fp32 `Encoder` (eval mode)."""
    path = Path(path)
    meta, tensors = read_packed(
        path,
        FORMAT,
        kind="int4",
        fix="re-export it",
        writer="encoderforge.compression.int4.export_int4",
        foreign_hint="; load it with checkpoint.load",
    )
    with incomplete_as_error(path, kind="int4", fix="re-export it"):  # a hand-edited or foreign file: name what is off
        group_size, spec = int(meta["group_size"]), json.loads(meta["quantized"])
        cfg = EncoderConfig.from_dict(json.loads(meta["model"]), source=f"{path}: metadata 'model'")
        weights = {
            n: QuantizedWeight(
                tensors.pop(f"{n}.codes"), tensors.pop(f"{n}.scale"), tensors.pop(f"{n}.zero"), tuple(s["shape"]), int(s["bits"])
            )
            for n, s in spec.items()
        }
        return dequantize_int4(Int4State(cfg, group_size, weights, tensors))


def export_int4(
    encoder: Encoder,
    path: str | Path,
    *,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    group_size: int = 128,
    keep_8bit: Sequence[str] = (),
    min_mean_cosine: float = INT4_MIN_MEAN_COSINE,
    max_length: int = 128,
) -> Int4Report:
    """Quantize, check the dequantized encoder against fp32 on `texts`, and only then write the file.

    Args:
        encoder: the fp32 `Encoder` (not modified).
        path: destination `.safetensors` file (nothing is written if the gate fails).
        tokenizer: the encoder's tokenizer; texts: real held-out texts for the gate (mean-pooled cosine).
        group_size, keep_8bit: as in `quantize_int4`.
        min_mean_cosine: the gate; below it, EncoderforgeError naming the cosine reached.
        max_length: tokens per text.
    Returns:
        an Int4Report (path, MiB on disk vs fp32, cosine, seconds).
    """
    if not texts:
        raise EncoderforgeError("texts is empty: pass a few hundred real held-out texts for the int4 fidelity gate")
    start = time.perf_counter()
    state = quantize_int4(encoder, group_size, keep_8bit=keep_8bit)
    fid = int8_fidelity(*(_embed(e, tokenizer, texts, max_length) for e in (encoder, dequantize_int4(state))))
    if fid["mean_cosine"] < min_mean_cosine:
        raise EncoderforgeError(
            f"int4 (group_size={group_size}) kept mean cosine {fid['mean_cosine']:.5f} to fp32 on {len(texts)} texts, "
            f"below min_mean_cosine={min_mean_cosine}; try group_size=32 or keep_8bit=('qkv', 'fc1')"
        )
    out = save_int4(state, path)
    fp32_bytes = sum(4 * t.numel() for t in encoder.state_dict().values())
    return Int4Report(
        out,
        out.stat().st_size / 2**20,
        fp32_bytes / 2**20,
        fid["mean_cosine"],
        fid["min_cosine"],
        len(texts),
        time.perf_counter() - start,
    )


@torch.no_grad()
def _embed(encoder: Encoder, tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """(n, C) mean-pooled embeddings, one unpadded (1, L) text at a time (no padding, so no mask to get wrong)."""
    training = encoder.training
    encoder.eval()
    ids = [torch.tensor([e.ids[:max_length]]) for e in tokenizer.encode_batch(list(texts))]  # (1, L) each
    out = torch.cat([encoder(i).mean(dim=1) for i in ids])  # (n, C)
    encoder.train(training)
    return out
