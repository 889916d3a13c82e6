"""Static int8 through ONNX Runtime: activation scales calibrated once on real texts (QDQ format), weights int8.

"Static": unlike `quantize.quantize_onnx` (dynamic: each activation tensor's range is measured per batch at run
time), every quantized activation gets one scale and zero point fixed at calibration, so a text's result does not
depend on what it is batched with. Shapes: L tokens of one text, C hidden size. Calibration and the gate feed one
unpadded text at a time, (1, L) int64 ids + mask: padded positions would only widen the calibrated ranges.
Usage: `export_onnx(encoder, "fp32.onnx", pooling="mean")` (inference/onnx_export.py; compression does not import
inference), then `quantize_static_onnx("fp32.onnx", "int8.onnx", tokenizer=..., calibration_texts=..., heldout_texts=...)`.

Choices, measured on the real MiniLM-L6 (calibration on 256 WNUT tweets, held out 256 others, mean-pooled cosine to
fp32, mean / min; 2 threads on a loaded 2-core AVX512-VNNI EPYC, ORT 1.32; the exploratory rows used padded
calibration batches, about 0.0005 below today's unpadded feeds):
- Quantize only the weight MatMuls' inputs, not their outputs (`OpTypesToExcludeOutputQuantization`): a QDQ pair
  on each MatMul output (before the bias Add) took the cosine from 0.987 to 0.923; adding Add, Softmax, Gather or
  every supported op (a full int8 chain) fell to 0.78 and 0.29. The attention MatMuls (QK^T, PV) are left fp32
  (`MatMulConstBOnly` did not exclude them in QDQ mode, so the weight MatMuls are listed by name).
- Keep fc1 fp32 (`KEEP_FP32`): its input is a post-norm LayerNorm output whose few outlier channels (Bondarenko et
  al. 2021) leave the other channels a handful of levels under one per-tensor scale. All weight MatMuls: 0.988 /
  0.960, below the 0.99 gate; without fc1: 0.9939 / 0.984; without qkv (the other LayerNorm reader): 0.990.
  Excluding fc1 in any single layer gained only 0.001: the loss is spread over the six layers.
- MinMax calibration (the only one offered): Percentile clips exactly those outliers (99.999: 0.9876, 99.99: 0.927,
  99.9: 0.866); Entropy matched MinMax (0.9869) at twice the calibration time (both need equal-shape batches).
- uint8 activations (`ACTIVATION_TYPE`): U8S8 hits the VNNI kernels; int8 activations gave the same cosine
  (an asymmetric int8 grid is the uint8 one shifted) and ran 1.2x slower (4.5 vs 3.8 s median on 256 tweets).
- Per-channel int8 weights, 7-bit only without VNNI: as `quantize.ORT_WEIGHT_TYPE` / `ORT_PER_CHANNEL`.

Speed: static int8 was not faster than dynamic int8 here (256 tweets, medians of 10 interleaved rounds: fp32 5.0 s,
dynamic 2.8 s, static 3.8 s, static with fc1 quantized too 3.1 s). ORT runs a QDQ MatMul as a QuantizeLinear plus
MatMulIntegerToFloat, while dynamic int8 fuses the range scan into DynamicQuantizeMatMul; the saving of a fixed
scale is a min/max pass, small next to the GEMM. Only int8 flowing between ops (quantized outputs) would skip the
conversions, and that is the 0.923 / 0.29 row above. Use dynamic int8 (`quantize_onnx`) by default; this path is
for runtimes that need fixed scales (accelerators, integer-only EPs). Size: the word-embedding Gather stays fp32
(66.0 MiB; dynamic int8 quantizes it as well: 21.8 MiB; fp32 86.1 MiB).

Our engine has its own static int8 now (`compression/int8_static.py`, recipe `runtime: engine`, the default): oneDNN's
int8 GEMM fed through the fused quantize kernel, GELU inside fc1's GEMM and uint8 codes between fc1 and fc2. The
eleventh session's notes here ("no torch static path") timed the oneDNN op behind a three-pass round/clamp/cast
quantize that cost more than the GEMM; with the fused kernel the static layers beat dynamic int8 (docs/results.md).
This module stays for ONNX Runtime deployments that need fixed scales.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError, require
from encoderforge.compression.onnx_files import check_output_path, temp_dir_beside
from encoderforge.compression.quantize import ORT_PER_CHANNEL, ORT_WEIGHT_TYPE, _quiet_root_logger, cpu_has_vnni, int8_fidelity

ActivationType = Literal["QUInt8", "QInt8"]
MIN_MEAN_COSINE = 0.99  # the dynamic int8 gate (tests/compression/test_quantize.py, docs/results-onnx.md)
KEEP_FP32 = ("fc1",)  # Linear names whose MatMul stays fp32 (module docstring)
ACTIVATION_TYPE: ActivationType = "QUInt8"


@dataclass(frozen=True)
class StaticInt8Report:
    """What `quantize_static_onnx` wrote and how closely it matches the fp32 file."""

    path: Path
    size_mb: float  # MiB on disk
    mean_cosine: float  # per held-out text, mean-pooled (or the graph's pooled output): int8 vs the fp32 file
    min_cosine: float
    n_calibration: int
    n_heldout: int
    seconds: float  # calibration + quantization + gate


class _Feeds:
    """The `CalibrationDataReader` protocol (ORT checks for `get_next`): one feed per call, then None."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_static_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    tokenizer: Tokenizer,
    calibration_texts: Sequence[str],
    heldout_texts: Sequence[str],
    keep_fp32: Sequence[str] = KEEP_FP32,
    activation_type: ActivationType = ACTIVATION_TYPE,
    min_mean_cosine: float = MIN_MEAN_COSINE,
    max_length: int = 128,
) -> StaticInt8Report:
    """Static int8 (QDQ) of an fp32 ONNX encoder's weight MatMuls, kept only if it passes the fidelity gate.

    Args:
        src: fp32 ONNX file from `export_onnx` (any pooling).
        dst: int8 `.onnx` file; written atomically, and only when the gate passes.
        tokenizer: the model's tokenizer.
        calibration_texts: real texts the activation ranges are measured on (a few hundred).
        heldout_texts: other real texts for the gate: cosine of int8 to fp32 per text.
        keep_fp32: Linear names (e.g. "fc1", "qkv") whose MatMuls stay fp32.
        activation_type: "QUInt8" (default, the fast one on x86) or "QInt8".
        min_mean_cosine: the gate; below it, EncoderforgeError naming the cosine reached, and nothing written.
        max_length: tokens per text ([CLS] ... truncated, as `encode_padded`).
    Returns:
        a StaticInt8Report (path, MiB, cosine, text counts, seconds).
    Example:
        >>> quantize_static_onnx("fp32.onnx", "s8.onnx", tokenizer=tok, calibration_texts=t[:256], heldout_texts=t[256:512])
    """
    onnx = require("onnx", "onnx")
    oq = require("onnxruntime.quantization", "onnx")
    start, src, dst = time.perf_counter(), Path(src), check_output_path(dst)
    if not src.is_file():
        raise EncoderforgeError(f"{src}: no such ONNX file; export one first with `encoderforge export onnx`")
    for field, texts in (("calibration_texts", calibration_texts), ("heldout_texts", heldout_texts)):
        if not texts:
            raise EncoderforgeError(f"{field} is empty: pass a few hundred real texts (e.g. lines of your corpus)")
    if activation_type not in ("QUInt8", "QInt8"):
        raise EncoderforgeError(f"activation_type={activation_type!r} is not supported; use 'QUInt8' or 'QInt8'")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and friends for a damaged file
        raise EncoderforgeError(f"{src}: not a readable ONNX file ({type(e).__name__}); re-export it") from None
    nodes = _weight_matmuls(model, keep_fp32, src)
    cal, held = (_feeds(tokenizer, t, max_length, _vocab_rows(model), src) for t in (calibration_texts, heldout_texts))
    with temp_dir_beside(dst) as tmp, _quiet_root_logger():
        q = tmp / "model.int8.onnx"
        try:
            oq.quantize_static(
                str(src),
                str(q),
                _Feeds(cal),
                quant_format=oq.QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=nodes,
                per_channel=ORT_PER_CHANNEL,
                reduce_range=not cpu_has_vnni(),
                activation_type=getattr(oq.QuantType, activation_type),
                weight_type=getattr(oq.QuantType, ORT_WEIGHT_TYPE),
                calibrate_method=oq.CalibrationMethod.MinMax,
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidArgument types
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EncoderforgeError(
                f"{src}: static int8 calibration failed in ONNX Runtime ({msg}); re-export the fp32 file"
            ) from None
        onnx.checker.check_model(str(q))
        fid = int8_fidelity(_vectors(src, held), _vectors(q, held))
        if fid["mean_cosine"] < min_mean_cosine:
            raise EncoderforgeError(
                f"static int8 kept mean cosine {fid['mean_cosine']:.5f} to fp32 on {len(held)} held-out texts, "
                f"below min_mean_cosine={min_mean_cosine}; keep more layers fp32 (keep_fp32=('fc1', 'qkv')) or use dynamic int8 (quantize_onnx)"
            )
        os.replace(q, dst)
    size = dst.stat().st_size / 2**20
    return StaticInt8Report(dst, size, fid["mean_cosine"], fid["min_cosine"], len(cal), len(held), time.perf_counter() - start)


def _weight_matmuls(model: Any, keep_fp32: Sequence[str], src: Path) -> list[str]:
    """Names of the MatMul nodes with a weight (initializer) input, minus those of the `keep_fp32` Linears."""
    weights = {i.name for i in model.graph.initializer}
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and any(x in weights for x in n.input)]
    for key in keep_fp32:
        if not any(f"/{key}/" in n for n in names):
            raise EncoderforgeError(
                f"keep_fp32 entry {key!r} matches no weight MatMul in {src}; use Linear names such as 'fc1', 'fc2', 'qkv', 'out'"
            )
    return [n for n in names if not any(f"/{key}/" in n for key in keep_fp32)]


def _vocab_rows(model: Any) -> int | None:
    """Rows of the embedding table `input_ids` indexes (the Gather reading input_ids), or None if not found."""
    dims = {i.name: i.dims for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == "input_ids" and n.input[0] in dims:
            return int(dims[n.input[0]][0])
    return None


def _feeds(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int, rows: int | None, src: Path
) -> list[dict[str, np.ndarray]]:
    """One unpadded (1, L) int64 feed per text; ids past the embedding table fail here, in one line."""
    ids = [np.asarray(e.ids[:max_length], dtype=np.int64)[None] for e in tokenizer.encode_batch(list(texts))]  # (1, L) each
    top = max(int(i.max()) for i in ids)
    if rows is not None and top >= rows:
        raise EncoderforgeError(
            f"the tokenizer makes ids up to {top} but {src} has {rows} embedding rows; pass the model's own tokenizer"
        )
    return [{"input_ids": i, "attention_mask": np.ones_like(i)} for i in ids]


def _vectors(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(n, C): the graph's output per text, mean-pooled over the L tokens if it is (1, L, C)."""
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = min(4, os.cpu_count() or 1), 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, f)[0] for f in feeds]  # (1, C) or (1, L, C) each
    return np.concatenate([o.mean(axis=1) if o.ndim == 3 else o for o in outs])
