"""Static int8 in our engine: each Linear's input range calibrated once on real texts, weights int8 per row.

Dynamic int8 (`int8_linear.Int8Linear`) scans every activation tensor for its range before each GEMM; here the
range is fixed at calibration (MinMax over the calibration texts, ONNX Runtime's default), so a Linear is one fused
quantize (x / scale + zero point -> uint8) and one oneDNN int8 GEMM with the bias inside. Fixed ranges also let the
feed-forward block stay in int8 between its two GEMMs: fc1 applies GELU inside the GEMM and writes uint8 codes on
fc2's calibrated grid, which fc2 reads as they are (`StaticInt8MLP`: no fp32 GELU pass, no quantize pass for fc2).
The kernel is `onednn::qlinear_pointwise`, the op torch's own x86 PT2E int8 flow lowers to (VNNI, and AMX tiles where
the CPU has them). We call it directly: `quantized::linear` (the eager static kernel) was no faster than dynamic int8
here, and the PT2E flow needs torch.compile (compression/static_int8.py's notes).
Weights: exactly the per-row int8 codes dynamic int8 uses (`int8_linear.int8_weight`), so one int8 file holds both.
Shapes: N tokens (any leading shape), C_in -> C_out. Usage:
    ranges = calibrate_ranges(encoder, lambda m: Engine(m, tok, pack=False).embed(texts))
    q = quantize_static_engine(encoder, ranges)
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import Callable, Literal, cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.int8_linear import int8_weight
from encoderforge.hardware.cpu import cpu_info
from encoderforge.model.layers import MLP
from encoderforge.model.surgery import replace_modules

Range = tuple[float, float]
PostOp = Literal["none", "gelu"]


@functools.cache
def static_engine_available() -> bool:
    """True if this torch's oneDNN int8 linear runs here (x86 builds with oneDNN) on a CPU with AVX512-VNNI: the op
    is called once on a tiny input, since a build may register it and still fail at run time. Without VNNI, oneDNN's
    u8 x s8 kernel sums pairs in saturating int16 and its outputs drift far from the direct computation even with
    7-bit weights (measured on an AVX2-only EPYC: relative error 0.07 on a MiniLM projection, 0.72 absolute on a
    small layer; < 0.01 with VNNI), so static int8 in our engine is offered only where it is accurate; elsewhere
    callers fall back to dynamic int8 (or `runtime: onnx`)."""
    if not cpu_info().vnni:
        return False
    if not (hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()):
        return False
    try:
        with torch.inference_mode():
            StaticInt8Linear(nn.Linear(4, 2), (-1.0, 1.0))(torch.ones(1, 4))
    except Exception:  # noqa: BLE001 - any failure means "not here"; callers fall back to dynamic int8
        return False
    return True


def uint8_grid(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of the asymmetric uint8 grid over [min(lo, 0), max(hi, 0)] (it must hold an exact 0)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise EncoderforgeError(f"static int8 range ({lo}, {hi}) is not finite: the calibration texts overflowed fp32")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(min(255, max(0, round(-lo / scale))))


def uint8_codes(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """(N, C) fp32 -> (N, C) uint8 codes round(x / scale) + zero, clipped to [0, 255], in one vectorized pass.

    `torch.quantize_per_tensor` is the fused kernel; its quint8 result is viewed as plain uint8 without a copy (the
    oneDNN op takes uint8). Measured on (2048, 1536), 1 thread: 0.54 ms, where `.int_repr()` (a copy) took 3.7 ms,
    round/clamp/cast 10.2 ms and `quantized_decomposed.quantize_per_tensor` (PT2E's reference op) 15.9 ms - more
    than the GEMM it feeds; the eleventh session's static kernel timing paid that and found no gain."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 flags quantized tensors as deprecated; the kernel is still there
        q = torch.quantize_per_tensor(x, scale, zero, torch.quint8)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


class StaticInt8Linear(nn.Module):
    """nn.Linear with int8 per-row symmetric weights and a calibrated per-tensor uint8 input grid.

    Input (*, in_features) fp32, or uint8 codes already on this layer's grid (from a fused predecessor) ->
    (*, out_features) fp32, or uint8 codes on `out_range`'s grid when given. `post_op="gelu"` applies exact GELU
    inside the GEMM. Inputs outside the calibrated range are clipped to it: what "static" trades for speed.
    `reduce_range` = 7-bit weights, for CPUs without VNNI (u8 x s8 pair sums then cannot saturate int16).
    """

    def __init__(
        self,
        linear: nn.Linear,
        x_range: Range,
        *,
        reduce_range: bool = False,
        qweight: torch.Tensor | None = None,
        post_op: PostOp = "none",
        out_range: Range | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features, self.reduce_range = linear.in_features, linear.out_features, reduce_range
        self.x_range, self.post_op, self.out_range = x_range, post_op, out_range
        self.x_scale, self.x_zero = uint8_grid(*x_range)
        self.out_scale, self.out_zero = uint8_grid(*out_range) if out_range else (1.0, 0)
        qw = int8_weight(linear.weight.detach(), reduce_range=reduce_range) if qweight is None else qweight  # (out, in)
        self.register_buffer("w_scale", qw.q_per_channel_scales().float(), persistent=False)  # (out,)
        self.register_buffer("w_zero", torch.zeros(self.out_features, dtype=torch.int64), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float(), persistent=False)
        self._packed = torch.ops.onednn.qlinear_prepack(qw.int_repr(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        qx = x if x.dtype == torch.uint8 else uint8_codes(x, self.x_scale, self.x_zero)
        y = torch.ops.onednn.qlinear_pointwise(
            qx, self.x_scale, self.x_zero, self._packed, self.w_scale, self.w_zero, self.bias,
            self.out_scale, self.out_zero, None if self.out_range else torch.float32, self.post_op, [], "none",
        )  # fmt: skip
        return y.reshape(*lead, self.out_features)

    def __deepcopy__(self, memo: dict[int, object]) -> "StaticInt8Linear":
        # the packed oneDNN weight is an opaque tensor (no storage to copy) and never written: copies share it
        memo[id(self._packed)] = self._packed
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def extra_repr(self) -> str:
        out = f", out_range=({self.out_range[0]:.4g}, {self.out_range[1]:.4g})" if self.out_range else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"x_range=({self.x_range[0]:.4g}, {self.x_range[1]:.4g}){out}, post_op={self.post_op}, reduce_range={self.reduce_range}"
        )


class StaticInt8MLP(nn.Module):
    """The GELU feed-forward block in int8 from end to end: fc1 (+ GELU inside the GEMM) writes uint8 codes on fc2's
    calibrated input grid, fc2 reads them. (C) -> (C), any leading shape; the same function as `MLP` up to rounding.
    fc2's input is codes, not values: a forward hook on fc2 (e.g. a pruning mask) would see uint8 codes."""

    def __init__(self, fc1: StaticInt8Linear, fc2: StaticInt8Linear):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def calibrate_ranges(encoder: nn.Module, run: Callable[[nn.Module], object]) -> dict[str, Range]:
    """{Linear name: (min, max) of its inputs} over whatever `run(encoder)` feeds it (e.g. an Engine over texts)."""
    seen: dict[str, list[float]] = {}
    hooks = []
    for name, mod in encoder.named_modules():
        if isinstance(mod, nn.Linear):

            def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                lo, hi = torch.aminmax(args[0].detach())
                cur = seen.setdefault(name, [float(lo), float(hi)])
                cur[0], cur[1] = min(cur[0], float(lo)), max(cur[1], float(hi))

            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            run(encoder)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        if any(isinstance(m, nn.Linear) for m in encoder.modules()):
            raise EncoderforgeError(
                "static int8 calibration saw no nn.Linear run: the model ran through other modules (an Engine packs "
                "its Linears unless built with pack=False); calibrate with Engine(model, tokenizer, pack=False)"
            )
        raise EncoderforgeError("static int8 calibration ran no Linear: calibrate on at least one real text")
    bad = [k for k, (lo, hi) in seen.items() if not (math.isfinite(lo) and math.isfinite(hi))]
    if bad:
        raise EncoderforgeError(f"static int8 calibration: {bad[0]}'s inputs are not finite; check the model's weights")
    return {k: (v[0], v[1]) for k, v in seen.items()}


def quantize_static_engine(
    encoder: nn.Module,
    ranges: dict[str, Range],
    *,
    keep: tuple[str, ...] = (),
    reduce_range: bool = False,
    fuse_mlp: bool = True,
    qweights: dict[str, torch.Tensor] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """An eval-mode copy of `encoder` (or `encoder` itself if `inplace`) with each calibrated nn.Linear replaced by a
    StaticInt8Linear, and each GELU MLP whose fc1 and fc2 are both quantized by a StaticInt8MLP (`fuse_mlp`).

    Linears whose name has a `keep` part (e.g. "fc1"), Linears the calibration never ran (the pooler under mean
    pooling) and Linears whose calibrated inputs were all ~0 (no grid to speak of) stay fp32 here; an int8 file
    (`int8_store.load_int8`) loads those as dynamic int8 instead. `qweights`: {"<linear>.weight": per-channel quantized tensor} codes to pack as they are (a
    stored int8 file); default: quantized here from the fp32 weights.
    """
    if not static_engine_available():
        raise EncoderforgeError(
            f"static int8 in our engine needs AVX512-VNNI and torch's oneDNN int8 linear (onednn::qlinear_pointwise; "
            f"torch {torch.__version__}, this CPU: {'VNNI' if cpu_info().vnni else 'no VNNI'}); "
            "use quantize method static_int8 with runtime: onnx, or method int8 (dynamic)"
        )
    model = encoder if inplace else copy.deepcopy(encoder)
    model = model.cpu().eval()
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = sorted(set(ranges) - linears)
    if unknown:
        raise EncoderforgeError(f"a calibrated range for {unknown[0]}, which is no Linear of this model: calibrate this model")
    names = {id(m): n for n, m in model.named_modules()}
    qweights = qweights or {}

    def wanted(name: str) -> bool:
        lo, hi = ranges.get(name, (0.0, 0.0))
        return max(hi, 0.0) - min(lo, 0.0) > 1e-6 and not any(k in name.split(".") for k in keep)

    def static(name: str, lin: nn.Module, **kw: object) -> StaticInt8Linear:
        lin = cast(nn.Linear, lin)
        return StaticInt8Linear(lin, ranges[name], reduce_range=reduce_range, qweight=qweights.get(f"{name}.weight"), **kw)  # type: ignore[arg-type]

    def fusable(name: str, m: nn.Module) -> bool:
        return (
            fuse_mlp
            and isinstance(m, MLP)
            and m.activation == "gelu"  # exact-erf GELU: what the oneDNN post-op computes
            and wanted(f"{name}.fc1")
            and wanted(f"{name}.fc2")
        )

    def fused(m: nn.Module) -> StaticInt8MLP:
        name = names[id(m)]
        fc2_range = ranges[f"{name}.fc2"]
        mlp = cast(MLP, m)
        fc1 = static(f"{name}.fc1", mlp.fc1, post_op="gelu", out_range=fc2_range)
        return StaticInt8MLP(fc1, static(f"{name}.fc2", mlp.fc2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 flags quantized tensors as deprecated; they still work
        replace_modules(model, fusable, fused)
        replace_modules(model, lambda n, m: isinstance(m, nn.Linear) and wanted(n), lambda m: static(names[id(m)], m))
    return model


def static_ranges(model: nn.Module) -> dict[str, Range]:
    """{original Linear name: calibrated input range} of a `quantize_static_engine` model (what an int8 file stores)."""
    out: dict[str, Range] = {}
    for name, m in model.named_modules():
        if isinstance(m, StaticInt8Linear):
            out[name] = m.x_range
    return out
