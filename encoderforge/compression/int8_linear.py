"""The dynamic int8 Linear (int8 per-channel weights, activations quantized per call) and the switch of torch's int8
kernel library it is packed for."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn


class Int8Linear(nn.Module):
    """A Linear with int8 per-channel symmetric weights; activations are quantized per call (dynamic), 8-bit.

    We build it instead of calling `torch.ao.quantization.quantize_dynamic` because that module hard-codes
    `reduce_range=True` (7-bit activations) and per-tensor weights by default; on MiniLM that kept only
    0.93 mean cosine to fp32, per-channel + full 8-bit range keeps 0.99 (docs/results-onnx.md).
    `reduce_range` here means what it means in ONNX Runtime: 7-bit *weights* ([-63, 63]) with 8-bit activations,
    so u8 x s7 pair sums (<= 32,130) cannot saturate VPMADDUBSW's int16 on CPUs without VNNI. On an AVX2 CPU that
    kept 0.991 mean / 0.980 min cosine on MiniLM, where torch's 7-bit activations kept 0.973 / 0.922 and full-range
    weights saturate (a random layer's output off by 20%) (docs/results.md, "Second machine").
    Input (*, in_features) -> (*, out_features), any leading shape (padded (B, T) or unpadded (N,)).
    """

    def __init__(self, linear: nn.Linear, *, reduce_range: bool, engine: str | None = None, qweight: torch.Tensor | None = None):
        super().__init__()
        self.engine = engine or torch.backends.quantized.engine  # the int8 kernel library that packed the weight
        self.in_features, self.out_features, self.reduce_range = linear.in_features, linear.out_features, reduce_range
        qw = int8_weight(linear.weight.detach(), reduce_range=reduce_range) if qweight is None else qweight  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings(), quantized_engine(self.engine):  # the packed format follows the engine
            warnings.simplefilter("ignore")  # torch 2.13 flags quantized tensors as deprecated; they still work
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, False)  # False: 8-bit activations

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, reduce_range={self.reduce_range}, engine={self.engine}"


def int8_weight(w: torch.Tensor, *, reduce_range: bool) -> torch.Tensor:
    """(rows, cols) float -> per-row symmetric int8 quantized tensor (zero point 0; 7-bit range if reduce_range)."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / (63.0 if reduce_range else 127.0)).clamp(min=1e-12).double()  # (rows,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)


def int8_from_codes(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The quantized tensor `int8_weight` made, back from its int8 codes (rows, cols) and float64 scales (rows,)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zero = torch.zeros_like(scale, dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes, scale.double(), zero, 0)


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Temporarily switch torch's int8 kernel library ("x86" = fbgemm with oneDNN for some shapes, "fbgemm", "onednn")."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old
