"""Which of torch's int8 kernel libraries runs dynamic int8 linears fastest on this CPU, by measurement.

torch ships two x86 int8 GEMM libraries behind `torch.backends.quantized.engine`: fbgemm ("x86", the default) and
oneDNN ("onednn"), which uses VNNI / AMX-INT8 where the CPU has them (the AMX Xeon measured 1,233 GFLOP/s through
oneDNN vs 272 with fbgemm; the AVX-512 EPYC 593 vs 520). Each is checked against the fp32 GEMM first (8-bit
error ~1% relative; a saturating kernel on a non-VNNI CPU is off by far more), then timed on the model's shapes;
the winner is cached per machine (encoderforge.hardware). ENCODERFORGE_INT8_ENGINE=x86|onednn forces one.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.int8_linear import Int8Linear
from encoderforge.hardware.choose import Choice, choose

ENGINE_ENV = "ENCODERFORGE_INT8_ENGINE"
ENGINES = ("x86", "onednn")
CHOICE_TOKENS = 2048  # the inference engine's default token budget per forward
TOLERANCE = 0.05  # relative error of an int8 GEMM to fp32: ~0.01 when the kernel is sound


def int8_engine_choice(model: nn.Module, *, reduce_range: bool) -> Choice:
    """The int8 engine for `model`'s nn.Linear shapes (at most the 4 largest), measured or from the cache."""
    forced = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if forced not in ("auto", *ENGINES):
        raise EncoderforgeError(
            f"{ENGINE_ENV}={os.environ[ENGINE_ENV]!r}: unknown int8 engine; use one of auto, {', '.join(ENGINES)}"
        )
    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    if not engines:  # pragma: no cover - a torch without x86 int8 kernels
        raise EncoderforgeError(f"torch {torch.__version__} has no x86 int8 engine; use the ONNX int8 path")
    if forced != "auto" and forced not in engines:
        raise EncoderforgeError(f"{ENGINE_ENV}={forced}: this torch build has no such engine; use one of {', '.join(engines)}")
    shapes = sorted(
        {(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)}, key=lambda s: -s[0] * s[1]
    )[:4]

    @functools.cache  # built at the first run: a cache hit builds and quantizes nothing
    def data() -> tuple[list[nn.Linear], list[torch.Tensor]]:
        gen = torch.Generator().manual_seed(0)
        layers = [nn.Linear(i, o) for i, o in shapes]
        for lin in layers:
            nn.init.normal_(lin.weight, std=lin.in_features**-0.5, generator=gen)
            nn.init.normal_(lin.bias, std=0.02, generator=gen)
        return layers, [torch.randn(CHOICE_TOKENS, lin.in_features, generator=gen) for lin in layers]

    @functools.cache
    def packed(engine: str) -> list[Int8Linear]:
        return [Int8Linear(lin, reduce_range=reduce_range, engine=engine) for lin in data()[0]]

    def runner(engine: str) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat([m(x).flatten() for m, x in zip(packed(engine), data()[1])])

    def reference() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([lin(x).flatten() for lin, x in zip(*data())])

    with torch.inference_mode():
        return choose(
            f"int8_linear/{'7bit' if reduce_range else '8bit'}/" + ",".join(f"{i}x{o}" for i, o in shapes),
            {e: runner(e) for e in engines},
            reference=reference,
            tol=TOLERANCE,
            forced=None if forced == "auto" else forced,
            forced_by=ENGINE_ENV,
        )
