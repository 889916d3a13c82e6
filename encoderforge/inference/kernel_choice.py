"""Which kernel runs the engine's linear layers, and in which precision, chosen by measurement on the model's own
GEMM shapes at the engine's token budget (`hardware.choose`: checked against float64, timed in interleaved rounds,
cached per CPU + library versions + threads, so an Engine measures once per machine).

Why measured, not fixed: which fp32 GEMM wins is a property of the CPU. oneDNN with pre-packed weights
(`cpu_pack`) ran 198 GFLOP/s vs MKL's 136 on the AVX-512 EPYC (2 threads, 2,048 x 384 -> 1,536) but lost on the
AVX2 EPYC and on the AMX Xeon (docs/results.md); bf16 ran 397 there, yet an emulated or narrow bf16 path can be
slower than fp32. `ENCODERFORGE_INFER_LINEAR=auto|onednn|torch` forces the fp32 kernel (checked all the same).

Shape legend: M tokens per measured GEMM (2,048), K in features, N out features.
"""

from __future__ import annotations

import os
from typing import Callable, cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.hardware.choose import Candidate, Choice, choose
from encoderforge.inference.cpu_pack import PackedLinear, packing_available
from encoderforge.model.surgery import is_cpu_fp32_linear

TOKENS = 2048  # M: the engine's default token budget, so the measured GEMMs are the ones a full batch runs
LINEAR_ENV = "ENCODERFORGE_INFER_LINEAR"
ENV_VALUES: dict[str, str | None] = {"auto": None, "onednn": "onednn-packed", "torch": "torch"}
FP32_TOL = 1e-4  # fp32 GEMMs agree with float64 to ~1e-6 relative; anything worse is a broken kernel
BF16_TOL = 1e-2  # bf16 rounds inputs and weights to 8 mantissa bits: ~3e-3 relative on these shapes
_ROW_STRIDE = 32  # the check compares every 32nd output row: spread over all blocks, a cheap float64 reference

Kernel = Callable[[nn.Linear], nn.Module]  # an fp32 nn.Linear -> the module that runs it (fp32 in, fp32 out)
FP32_KERNELS: dict[str, Kernel] = {
    "onednn-packed": lambda lin: PackedLinear(lin),
    "torch": lambda lin: lin,  # F.linear: MKL sgemm on the plain weight layout
}
BF16_KERNELS: dict[str, Kernel] = {"onednn-packed": lambda lin: PackedLinear(lin, dtype=torch.bfloat16)}


def linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """The distinct (K, N) of the model's CPU fp32 nn.Linear layers: what the kernels are measured on."""
    linears = [cast(nn.Linear, m) for m in model.modules() if is_cpu_fp32_linear(m)]
    return sorted({(m.in_features, m.out_features) for m in linears})


def forced_linear() -> str | None:
    """The fp32 kernel forced by ENCODERFORGE_INFER_LINEAR, or None for auto (measure)."""
    raw = os.environ.get(LINEAR_ENV, "").strip().lower() or "auto"
    if raw not in ENV_VALUES:
        raise EncoderforgeError(f"{LINEAR_ENV}={raw!r} is not a known value; set it to one of {', '.join(ENV_VALUES)}")
    return ENV_VALUES[raw]


class GemmSet:
    """The model's linear shapes on fixed random inputs (M x K each); `candidate(kernel)` runs one kernel over all
    of them and returns the sampled output rows that the check compares.

    Only the weights and the sampled input rows are made up front (~15 ms for MiniLM): when the choice is cached,
    no candidate runs and the full (M, K) inputs are never built."""

    def __init__(self, shapes: list[tuple[int, int]], tokens: int = TOKENS):
        self.shapes, self.tokens = shapes, tokens
        g = torch.Generator().manual_seed(0)
        # unit-variance outputs, like a trained layer's: W ~ N(0, 1/K); (N, K) and (N,) each
        self.weights = [(torch.randn(n, k, generator=g) * k**-0.5, torch.randn(n, generator=g) * 0.1) for k, n in shapes]
        self.sampled = [torch.randn(len(range(0, tokens, _ROW_STRIDE)), k, generator=g) for k, _ in shapes]  # (M/32, K)
        self._xs: list[torch.Tensor] = []

    def reference(self) -> torch.Tensor:
        """float64 outputs of the sampled rows, flattened and concatenated."""
        return torch.cat([(x.double() @ w.double().t() + b.double()).flatten() for x, (w, b) in zip(self.sampled, self.weights)])

    def inputs(self) -> list[torch.Tensor]:
        """The full (M, K) inputs, whose every 32nd row is the sampled one."""
        if not self._xs:
            g = torch.Generator().manual_seed(1)
            for (k, _), rows in zip(self.shapes, self.sampled):
                x = torch.randn(self.tokens, k, generator=g)
                x[::_ROW_STRIDE] = rows
                self._xs.append(x)
        return self._xs

    def linears(self) -> list[nn.Linear]:
        out = []
        for w, b in self.weights:
            lin = nn.Linear(w.shape[1], w.shape[0], device="meta").requires_grad_(False)
            lin.weight, lin.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
            out.append(lin.eval())
        return out

    def candidate(self, kernel: Kernel) -> Candidate:
        mods: list[nn.Module] = []

        def run() -> torch.Tensor:
            if not mods:  # built at the first (untimed) call: packing is a load-time cost, not a per-call one
                mods.extend(kernel(lin) for lin in self.linears())
            with torch.inference_mode():
                return torch.cat([m(x)[::_ROW_STRIDE].float().flatten() for m, x in zip(mods, self.inputs())])

        return run


def _task(prefix: str, shapes: list[tuple[int, int]], tokens: int) -> str:
    return f"{prefix}:{tokens}x[" + ",".join(f"{k}x{n}" for k, n in shapes) + "]"


def choose_fp32_linear(shapes: list[tuple[int, int]], *, tokens: int = TOKENS) -> Choice:
    """The fp32 kernel, "onednn-packed" or "torch", for the GEMMs of these (K, N) shapes at `tokens` rows: forced by
    ENCODERFORGE_INFER_LINEAR, else measured (cached)."""
    forced = forced_linear()
    task = _task("infer-linear-fp32", shapes, tokens)
    kernels = FP32_KERNELS if packing_available() else {k: v for k, v in FP32_KERNELS.items() if k != "onednn-packed"}
    if forced is not None and forced not in kernels:
        note = f"{LINEAR_ENV} asks for {forced}, which this torch build lacks (no oneDNN); using torch"
        return Choice(task, "torch", "fallback", note=note)
    if len(kernels) == 1 and forced is None:
        return Choice(task, next(iter(kernels)), "measured", note="the only kernel this torch build has")
    gs = GemmSet(shapes, tokens)
    cands = {name: gs.candidate(k) for name, k in kernels.items()}
    return choose(task, cands, reference=gs.reference(), tol=FP32_TOL, forced=forced, forced_by=LINEAR_ENV)


def choose_precision(shapes: list[tuple[int, int]], fp32_kernel: str, *, tokens: int = TOKENS) -> Choice:
    """The precision, "fp32" (with the chosen fp32 kernel) or "bf16" (oneDNN packed, cast in and out), that is faster
    on these shapes; bf16 must also stay within BF16_TOL of float64. The caller checks that the CPU has native bf16 first."""
    gs = GemmSet(shapes, tokens)
    cands = {"fp32": gs.candidate(FP32_KERNELS[fp32_kernel]), "bf16": gs.candidate(BF16_KERNELS["onednn-packed"])}
    return choose(_task(f"infer-precision-{fp32_kernel}", shapes, tokens), cands, reference=gs.reference(), tol=BF16_TOL)
