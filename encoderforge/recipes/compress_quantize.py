"""The `quantize` step of a compression recipe: the quantized artefact beside an fp32 model/ (the head and tokenizer
live there); the report reads each artefact back through its own loader (recipes/compress_bench.step_model).

    method int8                       model-int8.safetensors         dynamic int8, our engine
    method static_int8, runtime engine model-static-int8.safetensors  static int8, our engine (calibrated ranges)
    method static_int8, runtime onnx   model-static-int8.onnx         static int8 QDQ, ONNX Runtime
    method int4                       model-int4.safetensors         4-bit weights, dequantized at load
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.recipe import Quantize
from encoderforge.compression.static_int8 import MIN_MEAN_COSINE  # one gate for static int8 in every runtime
from encoderforge.model.encoder import Encoder
from encoderforge.recipes.compress_teacher import TeacherRun, save_step_model, student_encoder


def quantize_step(t: TeacherRun, net: nn.Module, step: Quantize, d: Path) -> dict[str, Any]:
    """Write step `d`'s model/ and its quantized artefact; returns what metrics.json records about it."""
    from encoderforge.compression.quantize import cpu_has_vnni

    save_step_model(t, net, d)
    enc = cast(Encoder, student_encoder(net))
    if step.method == "int8":
        from encoderforge.compression.int8_store import save_int8

        save_int8(enc, d / "model-int8.safetensors", reduce_range=not cpu_has_vnni())
        return {"quantize": "int8", "artefact": "model-int8.safetensors"}
    held = [ex.texts[0] for ex in t.dev.examples[:64]]  # the fidelity gates' texts: dev, never the test split
    calibration = [ex.texts[0] for ex in t.train.examples[: step.calibration]]
    if step.method == "int4":
        from encoderforge.compression.int4 import export_int4

        r4 = export_int4(
            enc,
            d / "model-int4.safetensors",
            tokenizer=t.tokenizer,
            texts=held,
            group_size=step.group_size,
            keep_8bit=step.keep_8bit,
            max_length=t.meta["max_length"],
        )
        return {"quantize": "int4", "artefact": "model-int4.safetensors", "cosine": round(r4.mean_cosine, 5)}
    if step.runtime == "engine":
        return static_engine_step(t, enc, d, calibration, held, reduce_range=not cpu_has_vnni())
    from encoderforge.compression.static_int8 import quantize_static_onnx
    from encoderforge.inference.onnx_export import export_onnx

    fp32 = export_onnx(enc, d / "fp32-for-calibration.onnx", pooling="none")
    try:
        r8 = quantize_static_onnx(
            fp32,
            d / "model-static-int8.onnx",
            tokenizer=t.tokenizer,
            calibration_texts=calibration,
            heldout_texts=held,
            max_length=t.meta["max_length"],
        )
    finally:
        fp32.unlink(missing_ok=True)
    return {
        "quantize": "static_int8",
        "runtime": "onnx",
        "artefact": "model-static-int8.onnx",
        "cosine": round(r8.mean_cosine, 5),
    }


def static_engine_step(
    t: TeacherRun, enc: Encoder, d: Path, calibration: list[str], held: list[str], *, reduce_range: bool
) -> dict[str, Any]:
    """Calibrate every Linear's input range on `calibration` through our engine, write the int8 file with those ranges,
    and keep it only if the model read back from it passes the fidelity gate on `held` (mean cosine to fp32)."""
    from encoderforge.compression.int8_static import calibrate_ranges, static_engine_available
    from encoderforge.compression.int8_store import load_int8, save_int8
    from encoderforge.compression.quantize import int8_fidelity
    from encoderforge.inference.engine import Engine

    if not static_engine_available():  # it would load back as dynamic int8: say so before calibrating anything
        raise EncoderforgeError(
            f"{d.name}: static int8 in our engine needs AVX512-VNNI and torch's oneDNN int8 linear, which this machine "
            "lacks; use runtime: onnx (ONNX Runtime static int8) or method: int8 (dynamic)"
        )

    n = t.meta["max_length"]
    ranges = calibrate_ranges(enc, lambda m: Engine(cast(Encoder, m), t.tokenizer, max_length=n, pack=False).embed(calibration))
    path = save_int8(enc, d / "model-static-int8.safetensors", reduce_range=reduce_range, static=ranges)
    fp32, int8 = (Engine(m, t.tokenizer, max_length=n, pack=False).embed(held) for m in (enc, load_int8(path)))
    fid = int8_fidelity(fp32, int8)
    if fid["mean_cosine"] < MIN_MEAN_COSINE:
        path.unlink()
        raise EncoderforgeError(
            f"{d.name}: static int8 kept mean cosine {fid['mean_cosine']:.5f} to fp32 on {len(held)} dev texts, below "
            f"{MIN_MEAN_COSINE} (calibrated on {len(calibration)} training texts); use runtime: onnx (keeps fc1 "
            "fp32) or method: int8 (dynamic ranges)"
        )
    return {
        "quantize": "static_int8",
        "runtime": "engine",
        "artefact": path.name,
        "cosine": round(fid["mean_cosine"], 5),
        "calibration_texts": len(calibration),
    }
