"""Pre-packed oneDNN linear layers for CPU inference: a model -> model transform used by the engine.

Why by hand: `F.linear` on CPU calls MKL sgemm with the weight in its plain layout. On this machine (AMD EPYC,
AVX-512) that reaches ~100 GFLOP/s per core, while oneDNN's matmul with the weight reordered once into its
blocked layout reaches ~230 GFLOP/s (and fuses the bias and the exact GELU) — measured in docs/results.md.
torch exposes that kernel as `torch.ops.mkldnn._linear_pointwise` (the op Inductor's CPU freezing pass emits);
we call it directly so eager inference gets it without compiling. Falls back to nn.Linear where it is missing.

bf16 (`dtype=torch.bfloat16`): the same op with bf16 weights runs AVX512-BF16 dot products with fp32 accumulation,
397 vs 198 GFLOP/s for fp32 at 2,048 x 384 -> 1,536 on the AVX-512 EPYC (2 threads). Only the GEMMs are bf16: each
packed linear takes and returns fp32 (LayerNorm, residuals, softmax stay fp32), except that inside the MLP the
GELU output stays bf16 into fc2, saving a cast round trip of the widest activation. The bias stays fp32 (the op
adds it to the fp32 accumulator), so it is not rounded. Whether bf16 is used at all is measured and checked by the
engine (`inference.kernel_choice`, `inference.precision`).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge.model.attention import Attention
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
    """y = act(x W^T + b) with W pre-packed for oneDNN; inference only. x: (..., in) -> (..., out).

    `dtype` is the GEMM's precision (weights and input are cast to it; fp32 accumulation either way), `out_dtype`
    the output's (default fp32)."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        activation: str = "none",
        dtype: torch.dtype = torch.float32,
        out_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation = activation  # "none" or "gelu" (exact erf GELU, as BERT)
        self.dtype, self.out_dtype = dtype, out_dtype
        w = linear.weight.detach().to(dtype).contiguous()
        # Packed layout is opaque to state_dict: keep it as a plain attribute, not a parameter/buffer.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, self.in_features).to(self.dtype),  # no-op when x already has the GEMM's dtype
            self.packed,
            self.bias,
            self.activation,
            [],
            "none" if self.activation == "gelu" else "",
        )
        return y.view(*lead, self.out_features).to(self.out_dtype)


class PackedMLP(nn.Module):
    """The encoder MLP with packed weights; for plain GELU the activation is fused into the first GEMM."""

    def __init__(self, mlp: MLP, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.gated = mlp.gated
        # fc1's output (the widest activation) stays in the GEMM dtype: fc2 would cast it back anyway
        self.fc1 = PackedLinear(mlp.fc1, activation="none" if mlp.gated else "gelu", dtype=dtype, out_dtype=dtype)
        self.fc2 = PackedLinear(mlp.fc2, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            h = F.gelu(a) * g
        return self.fc2(h)


def pack_for_cpu(model: nn.Module, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Return an inference copy of `model` whose fp32 nn.Linear layers (and encoder MLPs) use packed oneDNN
    kernels running GEMMs in `dtype` (fp32 or bf16; each block's input and output stay fp32, inside the attention
    and MLP blocks activations stay in `dtype`). Other modules (e.g. int8
    linears) are left as they are; the input is not modified."""
    if not packing_available():
        return model
    model = copy.deepcopy(model).eval()
    if dtype != torch.float32:
        # The attention block runs in the GEMM dtype too: qkv's output stays bf16 into the (B, T) grid copy and SDPA
        # (flash attention on CPU accumulates in fp32), and `out` reads it without a cast. On the AVX512-BF16 EPYC
        # this made bf16 embedding ~10% faster at the same cosine to fp32 (0.99998; docs/results.md, issue 19).
        for attn in model.modules():
            if isinstance(attn, Attention) and is_cpu_fp32_linear(attn.qkv):
                attn.qkv = PackedLinear(attn.qkv, dtype=dtype, out_dtype=dtype)  # type: ignore[assignment]
    replace_modules(
        model,
        lambda _, m: _packable_mlp(m) or is_cpu_fp32_linear(m),
        lambda m: PackedMLP(m, dtype=dtype) if isinstance(m, MLP) else PackedLinear(cast(nn.Linear, m), dtype=dtype),
    )
    return model


def _packable_mlp(m: nn.Module) -> bool:
    return isinstance(m, MLP) and is_cpu_fp32_linear(m.fc1) and is_cpu_fp32_linear(m.fc2)
