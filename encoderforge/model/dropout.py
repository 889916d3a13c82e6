"""Dropout with a cheaper keep-mask on CPU: the encoder's hidden, embedding, head and attention dropout.

Why by hand: torch's CPU dropout draws one Bernoulli sample per element from its generator (~13-16 ns per
element on both development boxes). In an MLM step of MiniLM-L6 on 8x128 tokens that was 13% of the step
(torch.profiler: aten::bernoulli_), and attention dropout draws B*H*T*T of them per layer. Here each mask takes one
seed from torch's default generator and draws 64-bit words from numpy's PCG64DXSM (~3 ns per word against ~8.6 ns
for torch's `random_()` on int64, in a side measurement), each word four 16-bit uniforms compared with
round(p * 65536): a mask costs ~15% of torch's Bernoulli draw, half of the previous version's (three words per torch
draw) (benchmarks/dropout_masks.py, docs/results.md "Second machine").
The drop probability is thus quantised to 1/65536. Masks are a pure function of torch's default generator, so
`torch.manual_seed` (the training loop seeds it from (seed, step, rank) every step) makes them reproducible and
resumable, as torch's are.
Off CPU (CUDA's Philox kernel is fast) and at p = 0 or in eval mode this is torch's own dropout / the identity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool tensor of `shape`, each element True (kept) with probability 1 - p (p rounded to 1/65536)."""
    n = 1
    for s in shape:
        n *= s
    seed = int(torch.randint(0, 2**62, ()).item())  # one draw of torch's generator per mask
    draws = np.random.PCG64DXSM(seed).random_raw((n + 3) // 4)  # (ceil(n / 4),) uint64
    words = torch.from_numpy(draws.view(np.int16))[:n]  # four 16-bit words per draw: uniform in [-2^15, 2^15)
    level = round(p * _LEVELS)
    if level >= _LEVELS:  # p within 2^-17 of 1: drop everything (the int16 threshold would wrap around)
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return (words >= level - (_LEVELS >> 1)).view(shape).to(device)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep / (1 - p); saves the bool mask (1 byte per element) for the backward, as native dropout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability {p} is not in [0, 1]")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p == 1.0:
        return x * 0.0
    return _MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in for nn.Dropout (no parameters: checkpoints are unchanged)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1]")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
