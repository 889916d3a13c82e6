"""Which dtype the training loop autocasts to, and when bf16 is refused.

Parameters, gradients and AdamW state stay fp32 whatever the precision (master weights, Micikevicius et al. 2018,
"Mixed Precision Training"); only the forward and loss run under `torch.autocast(dtype=bfloat16)`.
On a CPU, bf16 is only worth it with native bf16 dot products (AVX512-BF16 or AMX): elsewhere oneDNN emulates bf16
GEMMs (widen to fp32, multiply, round back), slower than fp32 itself, so an explicit "bf16" there is an error
rather than a silent slowdown. "auto" keeps fp32 on every CPU, even where bf16 is faster (a MiniLM-L6 MLM step ran
1.4-1.7x faster under bf16 autocast on the 2-core AVX512-BF16 EPYC, no AMX; `encoderforge bench train --precision
bf16`): bf16 rounding changes a run's numbers, so on CPU it is asked for, not the default.
"""

from __future__ import annotations

import torch

from encoderforge import EncoderforgeError
from encoderforge.hardware.cpu import cpu_info


def check_precision(
    precision: str, device: str | torch.device, *, field: str = "train.precision", fix: str = "use fp32 or auto"
) -> None:
    """Raise a one-line error naming `field` and ending in `fix` when `precision` cannot run well on `device`
    ("cpu", "cuda", "auto" or a device). Called from TrainArgs validation and again for the resolved device, so
    it fails before any work."""
    if precision != "bf16":
        return
    kind = device.type if isinstance(device, torch.device) else device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu" and not cpu_info().bf16:
        raise EncoderforgeError(
            f"{field}=bf16: this CPU ({cpu_info().model}) has no AVX512-BF16 or AMX, so bf16 would be emulated and slow; {fix}"
        )
    if kind == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise EncoderforgeError(f"{field}=bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16 support; {fix}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = plain fp32).

    "bf16": bf16 where the device runs it natively, else the error of `check_precision`; "auto": bf16 on CUDA
    GPUs that support it, fp32 on every CPU (see the module docstring); "fp32": None."""
    check_precision(precision, device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
