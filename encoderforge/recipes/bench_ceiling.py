"""The GEMM ceilings `bench infer` reports each runner against: per precision, the best GFLOP/s this CPU reaches on
the model's own FFN GEMM shape at 2,048 tokens, over the kernels that could run it.

Why per precision: an int8 or bf16 runner measured against the fp32 ceiling reads as "over 100%", which says
nothing; against the ceiling of its own precision it says how much of the machine it uses.
  fp32: torch's default path (MKL sgemm) and oneDNN with a pre-packed weight.
  bf16: oneDNN pre-packed with bf16 weights, on bf16 input and output, and with the casts from and to fp32 that the
        engine's MLP entry and exit pay; only on a
        CPU with native bf16 (AVX512-BF16 or AMX), elsewhere it would measure an emulation nobody should use.
  int8: torch's dynamic int8 Linear (`compression.Int8Linear`: activations quantized per call) per int8 kernel
        library this torch has.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from encoderforge.hardware.choose import time_candidates
from encoderforge.hardware.cpu import cpu_info

TOKENS = 2048
Ceilings = dict[str, dict[str, float]]  # precision -> kernel -> GFLOP/s


def gemm_ceilings(hidden: int, intermediate: int, threads: int, reps: int = 20) -> Ceilings:
    """Median GFLOP/s of the (2,048 x hidden) -> intermediate GEMM per precision and kernel, all kernels timed in
    interleaved rounds (`hardware.choose.time_candidates`) so a noisy spell of the machine hits each of them."""
    from encoderforge.compression.int8_linear import Int8Linear
    from encoderforge.compression.quantize import cpu_has_vnni
    from encoderforge.inference.cpu_pack import PackedLinear, packing_available

    torch.set_num_threads(threads)
    x, lin = torch.randn(TOKENS, hidden), torch.nn.Linear(hidden, intermediate, bias=False)
    kernels: dict[str, dict[str, Callable[[], torch.Tensor]]] = {"fp32": {"torch.mm (MKL)": lambda: torch.mm(x, lin.weight.t())}}
    if packing_available():
        packed = PackedLinear(lin)
        kernels["fp32"]["oneDNN packed"] = lambda: packed(x)
        if cpu_info().bf16:
            packed16 = PackedLinear(lin, dtype=torch.bfloat16)
            pure16, x16 = PackedLinear(lin, dtype=torch.bfloat16, out_dtype=torch.bfloat16), x.bfloat16()
            kernels["bf16"] = {"oneDNN packed bf16 (fp32 in/out)": lambda: packed16(x), "oneDNN packed bf16": lambda: pure16(x16)}
    if hasattr(torch.ops.quantized, "linear_dynamic"):
        rr = not cpu_has_vnni()
        engines = [e for e in ("x86", "fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
        int8 = {e: Int8Linear(lin, reduce_range=rr, engine=e) for e in engines}
        kernels["int8"] = {f"torch dynamic int8 ({e})": functools.partial(m, x) for e, m in int8.items()}
    flops = 2 * TOKENS * hidden * intermediate
    runnable: dict[tuple[str, str], Callable[[], torch.Tensor]] = {}
    with torch.inference_mode():
        for precision, fns in kernels.items():
            for name, fn in fns.items():
                try:
                    fn()
                except RuntimeError:  # a kernel library this build lists but cannot run on this CPU
                    continue
                runnable[(precision, name)] = fn
        ms = time_candidates({f"{p}|{n}": fn for (p, n), fn in runnable.items()}, rounds=reps)
    out: Ceilings = {}
    for key, t in ms.items():
        precision, name = key.split("|", 1)
        out.setdefault(precision, {})[name] = flops / t / 1e6
    return out


def ceiling(gemms: Ceilings, precision: str) -> float | None:
    """The best kernel's GFLOP/s for `precision`, None when it was not measured on this CPU."""
    return max(gemms[precision].values()) if gemms.get(precision) else None
