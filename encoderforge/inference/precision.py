"""The engine's precision rules: which values are accepted, when bf16 may be offered (the CPU has native bf16), and
the fidelity gate a bf16 model must pass at load time before it replaces the fp32 one.

Why a gate and not only the GEMM check: bf16 rounds weights and activations to 8 mantissa bits; per GEMM that is
~3e-3 relative error (checked in `kernel_choice`), but what users keep is the pooled sentence vector after 6-24
layers. The gate embeds real sentences shipped with the package both ways and asks for mean cosine >= 0.999
(measured on MiniLM-L6: bf16 0.99999 mean / 0.99998 min; its int8 copy 0.993 / 0.990), so a model whose outputs
bf16 damages stays in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from encoderforge import EncoderforgeError
from encoderforge.hardware.cpu import cpu_info

Precision = Literal["fp32", "bf16", "auto"]
GATE_COSINE = 0.999  # mean cosine of bf16 to fp32 embeddings a bf16 model must reach
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "quickstart.txt"  # short real sentences, 4 domains


@dataclass(frozen=True)
class Fidelity:
    """Cosine of bf16 to fp32 sentence embeddings over the sample texts."""

    mean: float
    min: float

    @property
    def passed(self) -> bool:
        return self.mean >= GATE_COSINE


def check_precision(precision: str) -> None:
    if precision not in get_args(Precision):
        raise EncoderforgeError(f"precision={precision!r}: choose one of {', '.join(get_args(Precision))} (--precision)")


def native_bf16() -> bool:
    """The CPU runs bf16 dot products natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return cpu_info().bf16


def no_bf16_error() -> EncoderforgeError:
    return EncoderforgeError(
        f"precision=bf16: this CPU ({cpu_info().model}) has no AVX512-BF16 or AMX; use precision=fp32 or auto"
    )


def sample_texts() -> list[str]:
    """The bundled sample sentences the gate embeds."""
    return [t for t in SAMPLES.read_text(encoding="utf-8").splitlines() if t.strip()]


def fidelity(ref: np.ndarray, got: np.ndarray) -> Fidelity:
    """Row-wise cosine of two (n, C) embedding matrices."""
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True).clip(min=1e-12)
    b = got / np.linalg.norm(got, axis=1, keepdims=True).clip(min=1e-12)
    cos = (a * b).sum(axis=1)
    return Fidelity(mean=float(cos.mean()), min=float(cos.min()))
