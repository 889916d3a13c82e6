"""The dynamic-int8 model on disk: the very int8 codes its `Int8Linear`s run, and the word-embedding table in int8.

Why a file of its own: a torch `state_dict` of a quantized model keeps the fp32 word-embedding table, which is half
of a MiniLM's bytes (30,522 x 384 x 4 = 44.7 MiB), so an int8 model saved that way was only 1.9x smaller than fp32.
Here every nn.Linear weight is stored as its per-channel symmetric int8 codes + one fp32 scale per output row
(exactly `Int8Linear`'s quantization; loading packs those codes as they are), and the word
embeddings as per-row symmetric int8 (a lookup table: no saturation concern, full 8-bit range). LayerNorms, biases,
position and segment embeddings stay fp32. `load_int8` returns the ready int8 model.

Static int8 (`compression/int8_static.py`) stores the same codes plus each quantized Linear's calibrated input range
(metadata "static"); `load_int8` then builds the static layers, and dynamic ones for any Linear without a range.

Shapes: a Linear weight (out, in) -> codes (out, in) int8 + scale (out,) float64; the embedding (V, C) -> codes
(V, C) int8 + scale (V,) float64.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.int8_engine import int8_engine_choice
from encoderforge.compression.int8_linear import Int8Linear, int8_from_codes, int8_weight
from encoderforge.compression.int8_static import Range, quantize_static_engine, static_engine_available
from encoderforge.compression.packed_file import incomplete_as_error, read_packed
from encoderforge.fileio import atomic_file, check_output
from encoderforge.hardware.cpu import cpu_info
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.model.surgery import replace_modules

log = logging.getLogger(__name__)
FORMAT = "encoderforge-int8"
EMBEDDING = "embeddings.tok.weight"


def save_int8(
    encoder: Encoder, path: str | Path, *, reduce_range: bool, static: dict[str, Range] | None = None, fuse_mlp: bool = True
) -> Path:
    """Write `encoder` (fp32, not modified) as int8 codes to one .safetensors file, atomically.

    `static`: {Linear name: calibrated input range} (`int8_static.calibrate_ranges`) to load those Linears as static
    int8 (`fuse_mlp`: GELU MLPs int8 end to end); without it, every Linear loads as dynamic int8."""
    out = check_output(path, expect="file", flag="path")
    if out.suffix != ".safetensors":
        raise EncoderforgeError(f"{out}: the file name must end in .safetensors, e.g. {out.with_suffix('.int8.safetensors')}")
    linears = {f"{n}.weight" for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    stray = sorted(set(static or {}) - {n[: -len(".weight")] for n in linears})
    if stray:
        raise EncoderforgeError(f"{out}: a static range for {stray[0]}, which is no Linear of this model: calibrate this model")
    tensors: dict[str, torch.Tensor] = {}
    for name, t in encoder.state_dict().items():
        if name in linears or name == EMBEDDING:
            q = int8_weight(t.detach(), reduce_range=reduce_range and name != EMBEDDING)  # 7-bit GEMM weights w/o VNNI
            tensors[f"{name}.codes"], tensors[f"{name}.scale"] = q.int_repr(), q.q_per_channel_scales()
        else:
            tensors[name] = t.detach().float().contiguous()
    meta = {
        "format": FORMAT,
        "model": json.dumps(encoder.cfg.to_dict()),
        "reduce_range": json.dumps(reduce_range),
        "quantized": json.dumps(sorted(linears | {EMBEDDING})),
        **({"static": json.dumps(static), "fuse_mlp": json.dumps(fuse_mlp)} if static else {}),
    }
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    with atomic_file(out, "wb") as f:
        f.write(data)
    return out


def load_int8(path: str | Path, *, engine: str | None = None) -> Encoder:
    """Read a `save_int8` file -> the int8 model (Int8Linear layers holding the stored codes, or StaticInt8Linear ones
    where the file has calibrated ranges; eval mode, CPU)."""
    path = Path(path)
    meta, tensors = read_packed(
        path, FORMAT, kind="int8", fix="write it again", writer="encoderforge.compression.int8_store.save_int8"
    )
    with incomplete_as_error(path, kind="int8", fix="write it again"):  # a hand-edited or foreign file: name what is off
        cfg = EncoderConfig.from_dict(json.loads(meta["model"]), source=f"{path}: metadata 'model'")
        reduce_range = bool(json.loads(meta["reduce_range"]))
        quant = {n: int8_from_codes(tensors.pop(f"{n}.codes"), tensors.pop(f"{n}.scale")) for n in json.loads(meta["quantized"])}
        static = {k: (float(v[0]), float(v[1])) for k, v in json.loads(meta.get("static", "{}")).items()}
        fuse_mlp = bool(json.loads(meta.get("fuse_mlp", "true")))
        enc = Encoder(cfg)
        enc.load_state_dict({**tensors, **{n: q.dequantize() for n, q in quant.items()}}, strict=True)
    if not reduce_range and not cpu_info().vnni:  # 8-bit weights saved on a VNNI CPU would saturate int16 here
        log.warning("%s: 8-bit int8 weights on a CPU without AVX512-VNNI: requantized to 7 bits to avoid saturation", path)
        quant = {n: q if n == EMBEDDING else to_7bit(q) for n, q in quant.items()}
        reduce_range = True
    if static and not static_engine_available():
        log.warning(
            "%s: static int8 in our engine needs AVX512-VNNI and a working oneDNN int8 linear; running its int8 codes "
            "as dynamic int8",
            path,
        )
    elif static:  # the static layers first; any Linear without a range (e.g. the pooler) becomes dynamic below
        quantize_static_engine(enc, static, reduce_range=reduce_range, fuse_mlp=fuse_mlp, qweights=quant, inplace=True)
        if not any(isinstance(m, nn.Linear) for m in enc.modules()):
            return cast(Encoder, enc.eval())
    engine = engine or int8_engine_choice(enc, reduce_range=reduce_range).picked
    names = {id(m): n for n, m in enc.named_modules()}
    replace_modules(  # each Linear packs its stored codes (not re-quantized from the dequantized weight)
        enc,
        lambda _, m: isinstance(m, nn.Linear),
        lambda m: Int8Linear(
            cast(nn.Linear, m), reduce_range=reduce_range, engine=engine, qweight=quant[f"{names[id(m)]}.weight"]
        ),
    )
    return cast(Encoder, enc.eval())


def to_7bit(q: torch.Tensor) -> torch.Tensor:
    """Per-channel int8 codes in [-127, 127] -> the same weights on the 7-bit grid [-63, 63] (scale x 2)."""
    codes = torch.clamp(torch.round(q.int_repr().float() / 2), -63, 63).to(torch.int8)
    return int8_from_codes(codes, q.q_per_channel_scales() * 2)
