"""Pre-packed oneDNN linear layers for CPU inference: a model -> model transform used by the engine.

Why by hand: `F.linear` on CPU calls MKL sgemm with the weight in its plain layout. On this machine (AMD EPYC,
AVX-512) that reaches ~100 GFLOP/s per core, while oneDNN's matmul with the weight reordered once into its
blocked layout reaches ~230 GFLOP/s (and fuses the bias and the exact GELU) — measured in docs/results.md.
torch exposes that kernel as `torch.ops.mkldnn._linear_pointwise` (the op Inductor's CPU freezing pass emits);
we call it directly so eager inference gets it without compiling. Falls back to nn.Linear where it is missing.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.layers import MLP
from encoderforge.model.surgery import is_cpu_fp32_linear, replace_modules


def packing_available() -> bool:
    """oneDNN is compiled in and exposes the packed linear ops."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(nn.Module):
    """y = act(x W^T + b) with W pre-packed for oneDNN; inference only. x: (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear, *, activation: str = "none"):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation = activation  # "none" or "gelu" (exact erf GELU, as BERT)
        w = linear.weight.detach().contiguous()
        # Packed layout is opaque to state_dict: keep it as a plain attribute, not a parameter/buffer.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, self.in_features),
            self.packed,
            self.bias,
            self.activation,
            [],
            "none" if self.activation == "gelu" else "",
        )
        return y.view(*lead, self.out_features)


class PackedMLP(nn.Module):
    """The encoder MLP with packed weights; for plain GELU the activation is fused into the first GEMM."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.gated = mlp.gated
        self.fc1 = PackedLinear(mlp.fc1, activation="none" if mlp.gated else "gelu")
        self.fc2 = PackedLinear(mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            h = F.gelu(a) * g
        return self.fc2(h)


def pack_for_cpu(model: nn.Module) -> nn.Module:
    """Return an inference copy of `model` whose fp32 nn.Linear layers (and encoder MLPs) use packed oneDNN
    kernels. Other modules (e.g. int8 linears) are left as they are; the input is not modified."""
    if not packing_available():
        return model
    model = copy.deepcopy(model).eval()
    replace_modules(
        model,
        lambda _, m: _packable_mlp(m) or is_cpu_fp32_linear(m),
        lambda m: PackedMLP(m) if isinstance(m, MLP) else PackedLinear(cast(nn.Linear, m)),
    )
    return model


def _packable_mlp(m: nn.Module) -> bool:
    return isinstance(m, MLP) and is_cpu_fp32_linear(m.fc1) and is_cpu_fp32_linear(m.fc2)
