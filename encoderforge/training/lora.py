"""LoRA (Hu et al. 2021): fine-tune low-rank updates W + (alpha / r) B A of the encoder's linear layers while
every pretrained weight stays frozen; afterwards merge B A into W, so the saved checkpoint is a plain encoder
that the inference Engine, ONNX export and Hugging Face export use unchanged.

Shapes: in features I, out features O, rank r; A: (r, I), B: (O, r).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.dropout import Dropout
from encoderforge.model.encoder import Encoder
from encoderforge.model.surgery import replace_modules

TARGETS = ("attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update; B starts at zero, so the output starts unchanged."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear (and the LoRA reference code)
        self.scale = alpha / rank
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.drop(x) @ self.lora_a.T @ self.lora_b.T) * self.scale  # (*, O)

    def merged(self) -> nn.Linear:
        """The equivalent plain Linear: W + scale * B A."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out.to(self.base.weight.device)


def apply_lora(
    encoder: Encoder, rank: int, alpha: float = 16.0, *, targets: tuple[str, ...] = TARGETS, dropout: float = 0.0
) -> int:
    """Freeze the encoder and wrap its target linear layers (per block) with LoRA adapters.

    Args:
        encoder: modified in place.
        rank: adapter rank r (4-16 typical).
        alpha: the update is scaled by alpha / rank.
        targets: block-relative names of the linear layers to adapt.
        dropout: dropout on the adapter's input.
    Returns:
        the number of trainable adapter parameters.
    """
    if rank < 1:
        raise EncoderforgeError(f"--lora-rank={rank}: use a positive rank (0 means no LoRA)")
    wanted = {f"layers.{i}.{name}" for i in range(len(encoder.layers)) for name in targets}
    found = {name for name, m in encoder.named_modules() if name in wanted and isinstance(m, nn.Linear)}
    if found != wanted:  # checked before any change, so a bad target leaves the encoder as it was
        missing = min(wanted - found).split(".", 2)[2]  # "layers.{i}.<target>" -> "<target>"
        raise EncoderforgeError(
            f"LoRA target {missing!r} is not a linear layer of the encoder blocks; use some of {list(TARGETS)}"
        )
    encoder.requires_grad_(False)
    added = 0

    def wrap(layer: nn.Module) -> LoRALinear:
        nonlocal added
        linear = cast(nn.Linear, layer)  # `wanted` holds only linear layers (checked above)
        wrapped = LoRALinear(linear, rank, alpha, dropout).to(linear.weight.device)
        added += wrapped.lora_a.numel() + wrapped.lora_b.numel()
        return wrapped

    replace_modules(encoder, lambda name, _: name in wanted, wrap)
    return added


def merge_lora(encoder: Encoder) -> int:
    """Replace every LoRALinear by its merged nn.Linear (trainable again, as a plain encoder); returns how many."""
    merged = replace_modules(encoder, lambda _, m: isinstance(m, LoRALinear), lambda m: cast(LoRALinear, m).merged())
    encoder.requires_grad_(True)
    encoder.pooler.requires_grad_(True)
    return merged
