"""Fine-tuning parameter surgery: freeze the lower layers, re-initialise the top ones, layer-wise LR decay groups.

Why: small fine-tuning sets are unstable with a full-LR update of every layer. Freezing the embeddings and lower
layers, re-initialising the top layer(s) and decaying the learning rate towards the input ("Revisiting Few-sample
BERT Fine-tuning", Zhang et al. 2021; "Fine-tuning Large Neural Language Models for Biomedical NLP: BioNLP
stability", Tinn et al. 2023; ULMFiT's discriminative rates) all trade a little capacity for stability.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.encoder import Encoder, _init_weights


def freeze_lower(encoder: Encoder, n: int) -> int:
    """Freeze the embeddings and the lowest `n` layers (n=0: nothing). Returns the number of frozen parameters."""
    if not 0 <= n <= encoder.cfg.num_layers:
        raise EncoderforgeError(
            f"--freeze-layers={n}: the model has {encoder.cfg.num_layers} layers; use 0..{encoder.cfg.num_layers}"
        )
    if n == 0:
        return 0
    frozen = 0
    for module in (encoder.embeddings, *encoder.layers[:n]):
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def reinit_top(encoder: Encoder, n: int, seed: int = 0) -> None:
    """Re-initialise the top `n` layers with BERT's initialisation (their pretraining-specific weights transfer
    worst, Zhang et al. 2021)."""
    if not 0 <= n <= encoder.cfg.num_layers:
        raise EncoderforgeError(
            f"--reinit-layers={n}: the model has {encoder.cfg.num_layers} layers; use 0..{encoder.cfg.num_layers}"
        )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for block in encoder.layers[encoder.cfg.num_layers - n :]:
        block.apply(_init_weights)
    torch.random.set_rng_state(gen_state)


def layer_of(name: str, num_layers: int) -> int:
    """Depth of a parameter: 0 = embeddings, i + 1 = encoder layer i, num_layers + 1 = anything above (head, norm)."""
    if name.startswith("encoder.embeddings."):
        return 0
    if name.startswith("encoder.layers."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def param_groups(
    model: nn.Module, *, weight_decay: float, lr_decay: float = 1.0, head_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups with an `lr_scale` per depth: the head gets 1, layer i gets lr_decay ** (depth above it), the
    embeddings the smallest (layer-wise LR decay, Clark et al. 2020 ELECTRA; 0.8-0.95 typical; 1.0 = off).
    Decay applies to matrices only (BERT's exclusion of biases and LayerNorm weights, stated by shape).

    `head_scale` multiplies the head's scale (everything above the encoder's last layer).

    Returns:
        groups for torch.optim.AdamW; the training loop multiplies its scheduled LR by each group's `lr_scale`.
    """
    if not 0 < lr_decay <= 1:
        raise EncoderforgeError(f"--lr-decay={lr_decay}: use a value in (0, 1] (1 = no layer-wise decay)")
    encoder = getattr(model, "encoder", None)
    top = encoder.cfg.num_layers + 1 if encoder is not None else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_of(name, top - 1) if encoder is not None else 0
        decay = p.ndim >= 2
        g = groups.setdefault(
            (depth, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": (lr_decay ** (top - depth) if encoder is not None else 1.0) * (head_scale if depth == top else 1.0),
            },
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]
