"""Dynamic int8 quantization: torch (nn.Linear -> int8 GEMMs) and ONNX Runtime (MatMul -> int8), plus a fidelity check.

"Dynamic": weights are quantized once, activations per batch at run time, so no calibration data is
needed (Zafrir et al., Q8BERT; Shen et al., Q-BERT show BERT tolerates 8-bit weights). Shapes: n vectors, C dims.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path
from typing import Iterator, cast

import numpy as np
import torch
from torch import nn

from encoderforge import EncoderforgeError, require
from encoderforge.compression.int8_engine import int8_engine_choice
from encoderforge.compression.int8_linear import Int8Linear, quantized_engine  # noqa: F401 - re-exported
from encoderforge.compression.onnx_files import check_output_path, temp_dir_beside
from encoderforge.hardware.cpu import cpu_info
from encoderforge.model.surgery import replace_modules

# ONNX Runtime: int8 weights (uint8 activations) hit the U8S8 VNNI kernels; U8U8 (QUInt8) ran ~1.5x slower
# here. Per-channel scales: per-tensor ones lost ~4 cosine points on MiniLM. Measured in docs/results-onnx.md.
ORT_WEIGHT_TYPE = "QInt8"
ORT_PER_CHANNEL = True


def cpu_has_vnni() -> bool:
    """True if the x86 CPU has AVX512-VNNI (u8 x s8 dot products accumulate in int32, so 8-bit activations
    cannot saturate). Without it, int8 kernels use VPMADDUBSW, whose int16 pair sums can saturate at full
    8-bit range: that is why torch and ONNX Runtime offer `reduce_range` (7 bits)."""
    return cpu_info().vnni


def quantize_dynamic(encoder: nn.Module, *, reduce_range: bool | None = None, engine: str | None = None) -> nn.Module:
    """Return an int8 copy of `encoder` with every nn.Linear replaced by an `Int8Linear`.

    The fused qkv projection, attention output, MLP and pooler become int8 GEMMs (torch's x86/fbgemm
    kernels, the same ones `torch.ao.quantization.quantize_dynamic` uses; that API is deprecated in torch
    2.13 in favour of torchao, which is not a dependency). Embeddings and LayerNorms stay fp32. Works with
    every attention backend (eager, sdpa, varlen): only Linear modules change, so `set_attention` still works.

    Args:
        encoder: an fp32 `Encoder` (or any module holding nn.Linear layers); it is not modified.
        reduce_range: 7-bit weights (see `Int8Linear`); default: only on CPUs without AVX512-VNNI (see `cpu_has_vnni`).
        engine: torch's int8 kernel library; default: the fastest on this CPU for the model's shapes that passes its
            numerical check (`compression.int8_engine.int8_engine_choice`, cached per machine).
    Returns:
        the quantized copy, in eval mode (CPU only). The packed int8 weights are not in its state_dict:
        keep saving the fp32 checkpoint and quantize after loading (it takes well under a second).
    """
    if not hasattr(torch.ops.quantized, "linear_dynamic"):  # pragma: no cover - a torch without int8 kernels
        raise EncoderforgeError(
            f"torch {torch.__version__} has no dynamic int8 Linear kernels; "
            "use the ONNX int8 path (`encoderforge export onnx --int8`)"
        )
    rr = (not cpu_has_vnni()) if reduce_range is None else reduce_range
    model = copy.deepcopy(encoder).cpu().eval()
    if engine is None:
        engine = int8_engine_choice(model, reduce_range=rr).picked
    replace_modules(
        model, lambda _, m: isinstance(m, nn.Linear), lambda m: Int8Linear(cast(nn.Linear, m), reduce_range=rr, engine=engine)
    )
    return model


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    weight_type: str = ORT_WEIGHT_TYPE,
    per_channel: bool = ORT_PER_CHANNEL,
    reduce_range: bool | None = None,
) -> Path:
    """ONNX Runtime dynamic int8 quantization of every MatMul weight, written atomically to `dst`.

    Args:
        src: fp32 ONNX file (e.g. from `export_onnx`).
        dst: int8 ONNX file to write (may equal `src`).
        weight_type: "QInt8" or "QUInt8" (activations are always dynamically quantized to uint8).
        per_channel: one scale per output channel instead of one per tensor.
        reduce_range: 7-bit weights; default: only on CPUs without AVX512-VNNI (see `cpu_has_vnni`). The
            file is portable, but saturation depends on the CPU that *runs* it: re-quantize for an AVX2-only box.
    Returns:
        the written path.
    """
    onnx = require("onnx", "onnx")
    ort_quantization = require("onnxruntime.quantization", "onnx")

    src, dst = Path(src), check_output_path(dst)
    if not src.is_file():
        raise EncoderforgeError(f"{src}: no such ONNX file; export one first with `encoderforge export onnx`")
    if weight_type not in ("QInt8", "QUInt8"):
        raise EncoderforgeError(f"weight_type={weight_type!r} is not supported; use 'QInt8' or 'QUInt8'")
    with temp_dir_beside(dst) as tmp, _quiet_root_logger():
        q = tmp / "model.int8.onnx"
        ort_quantization.quantize_dynamic(
            str(src),
            str(q),
            weight_type=getattr(ort_quantization.QuantType, weight_type),
            per_channel=per_channel,
            reduce_range=(not cpu_has_vnni()) if reduce_range is None else reduce_range,
        )
        onnx.checker.check_model(str(q))
        os.replace(q, dst)
    return dst


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop ORT's root-logger advice to run shape pre-processing first: on MiniLM it gave the same fidelity
    and no speed-up (docs/results-onnx.md)."""
    root, drop = logging.getLogger(), (lambda record: record.levelno >= logging.ERROR)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def int8_fidelity(fp32_vectors: torch.Tensor | np.ndarray, int8_vectors: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Cosine similarity between matching rows of two (n, C) embedding matrices.

    Args:
        fp32_vectors: reference vectors, (n, C).
        int8_vectors: the same inputs through the quantized model, (n, C).
    Returns:
        {"mean_cosine", "min_cosine", "n"}; an all-zero row counts as cosine 0.
    """
    a, b = (
        torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v).cpu().double() for v in (fp32_vectors, int8_vectors)
    )
    if a.shape != b.shape or a.ndim != 2 or not len(a):
        raise EncoderforgeError(
            f"int8_fidelity needs two non-empty (n, C) matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)  # (n,)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "n": len(cos)}
