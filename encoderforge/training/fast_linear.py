"""oneDNN GEMMs for training on CPU: forward, grad-input and grad-weight of every nn.Linear.

Why by hand: torch's CPU `F.linear`/`mm` go to MKL sgemm, which on AVX-512 AMD CPUs runs its generic path
(~100 GFLOP/s per core on the first development box), while the same three GEMMs through oneDNN's matmul
(`torch.ops.mkldnn._linear_pointwise`, the op Inductor emits) reach ~190-230 (measured in docs/results.md).
On an AVX2-only CPU the order flips: MKL is the faster GEMM and a whole MLM step runs 6-19% faster on it
(benchmarks/train_step_ablation.py, docs/results.md "Second machine"), so the loop swaps only where
`train_linear_kernel()` says "onednn".
The swap keeps the very same Parameter objects under the same names, so optimizers, state_dicts,
checkpoints and DDP see no difference.
"""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.surgery import is_cpu_fp32_linear, replace_modules

KERNEL_ENV = "ENCODERFORGE_TRAIN_LINEAR"
KERNELS = ("auto", "onednn", "torch")


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b_t^T (+ bias) through oneDNN: a (M, K), b_t (N, K) -> (M, N)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (M, in)
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.lead = bias is not None, x.shape[:-1]
        return _mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])  # (..., out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0]).contiguous()  # (M, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(g, weight.t().contiguous()).view(*ctx.lead, weight.shape[1])  # (M, in)
        if ctx.needs_input_grad[1]:
            grad_w = _mm(g.t().contiguous(), x2.t().contiguous())  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Module):
    """Drop-in for nn.Linear on CPU fp32 that holds the *same* weight/bias Parameters."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or self.weight.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
        ):
            return nn.functional.linear(x, self.weight, self.bias)  # autocast/bf16/CUDA: torch's own path
        return _OneDNNLinearFn.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# oneDNN caches one primitive per GEMM shape (1,024 by default) and training batches change shape every step:
# the cache then holds hundreds of MB that are never reused (benchmarks/finetune_rss.py ... onednn). A small cache
# keeps RSS down at no measured speed cost. oneDNN reads the variable when it first builds a primitive, so this
# only takes effect if set before the process's first oneDNN op (as at the start of training); a user's value wins.
PRIMITIVE_CACHE_CAPACITY = "64"


def train_linear_kernel() -> str:
    """The GEMM path for CPU fp32 training: "onednn" (the swap below) or "torch" (MKL through F.linear).

    auto (default): oneDNN where the CPU has AVX-512 (measured 2.3x MKL's GEMMs on an AVX-512 EPYC), MKL
    elsewhere (faster on the AVX2 EPYC we measured). A rule on the instruction set, not a timing probe, so every
    process of a run (DDP ranks, a resumed run) makes the same choice. ENCODERFORGE_TRAIN_LINEAR overrides it."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise EncoderforgeError(f"{KERNEL_ENV}={os.environ[KERNEL_ENV]!r}: unknown kernel; use one of {', '.join(KERNELS)}")
    if choice == "auto":
        wide = torch.backends.cpu.get_cpu_capability().upper().startswith(("AVX512", "AMX"))
        choice = "onednn" if wide else "torch"
    return "onednn" if choice == "onednn" and available() else "torch"


def use_training_linears(model: nn.Module) -> int:
    """What the training loop does on CPU: the oneDNN swap where `train_linear_kernel()` picks it; returns how
    many linears were swapped (0 = torch's own path)."""
    return use_onednn_linears(model) if train_linear_kernel() == "onednn" else 0


def use_onednn_linears(model: nn.Module) -> int:
    """Swap every CPU fp32 nn.Linear of `model` in place for a OneDNNLinear; returns how many were swapped."""
    if not available():
        return 0
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE_CAPACITY)
    return replace_modules(model, lambda _, m: is_cpu_fp32_linear(m), lambda m: OneDNNLinear(cast(nn.Linear, m)))


def restore_linears(model: nn.Module) -> int:
    """Undo `use_onednn_linears`: plain nn.Linear modules around the same Parameters; returns how many."""
    return replace_modules(model, lambda _, m: isinstance(m, OneDNNLinear), _plain_linear)


def _plain_linear(module: nn.Module) -> nn.Linear:
    m = cast(OneDNNLinear, module)  # the predicate selected OneDNNLinear modules only
    lin = nn.Linear(
        m.in_features, m.out_features, bias=m.bias is not None, device="meta"
    )  # no throwaway allocation: the parameters are replaced next
    lin.weight, lin.bias = m.weight, m.bias
    return lin
