"""Model surgery: the ONE place that swaps modules in a model or removes attention heads, FFN neurons and layers.

Every model -> model transform goes through here: LoRA adapters and their merge (training/lora.py), the oneDNN
training linears (training/fast_linear.py), CPU weight packing (inference/cpu_pack.py), int8 linears
(compression/quantize.py) and, next, structured pruning. One walk means one set of rules: which modules are
visited, that a replacement is never walked into, and that a module reachable twice is visited once.

Removal really shrinks the weight matrices (ZipLM, Kurtic et al. 2023; "Are Sixteen Heads Really Better than
One?", Michel et al. 2019), so the pruned model is faster, not just sparse. Every removal keeps the owning
Encoder's config in step (a new config object, as `Encoder.set_attention` makes): `EncoderConfig.with_layer_widths`
records the new widths (per-layer `layer_heads` / `layer_intermediate`, collapsed when uniform),
so a pruned model saves and rebuilds like any other checkpoint.

Shape legend: C hidden size, H heads, D head dim (C = H * D before pruning), I FFN width, H' / I' what is kept.
"""

from __future__ import annotations

from typing import Callable, Sequence, cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.attention import Attention
from encoderforge.model.config import EncoderConfig
from encoderforge.model.layers import MLP, Block

Predicate = Callable[[str, nn.Module], bool]  # (qualified name, module) -> replace it?
Builder = Callable[[nn.Module], nn.Module]  # the module -> its replacement


def replace_modules(model: nn.Module, predicate: Predicate, build: Builder) -> int:
    """Replace, in place, every submodule of `model` for which `predicate(name, module)` holds by `build(module)`.

    The walk is top-down: a replaced module's children (and its replacement) are not visited, so a builder
    may wrap or reuse the module it gets. A parent reachable under two names is visited once, as `model.modules()`
    would. `model` itself is never replaced.

    Args:
        model: modified in place.
        predicate: called with the qualified name (as in `named_modules`, e.g. "layers.0.attn.qkv") and the module.
        build: returns the module to put in its place.
    Returns:
        how many modules were replaced.
    Example:
        >>> replace_modules(enc, lambda name, m: type(m) is nn.Linear, lambda m: Int8Linear(m, reduce_range=False))
    """
    seen: set[int] = set()

    def walk(parent: nn.Module, prefix: str) -> int:
        if id(parent) in seen:
            return 0
        seen.add(id(parent))
        n = 0
        for name, child in list(parent.named_children()):
            qualified = f"{prefix}{name}"
            if predicate(qualified, child):
                setattr(parent, name, build(child))
                n += 1
            else:
                n += walk(child, qualified + ".")
        return n

    return walk(model, "")


def is_cpu_fp32_linear(module: nn.Module) -> bool:
    """A plain nn.Linear (not a subclass) with fp32 weights on the CPU: what the oneDNN kernels take."""
    return type(module) is nn.Linear and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of an Encoder, or of a model that holds one (a task model's `.encoder`)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(isinstance(b, Block) for b in module):
            return module
    raise EncoderforgeError(f"{type(model).__name__} holds no encoder blocks; pass an Encoder or a model with one")


def _block(model: nn.Module, layer: int) -> Block:
    blocks = encoder_blocks(model)
    if not -len(blocks) <= layer < len(blocks):
        raise EncoderforgeError(f"layer={layer}: the encoder has {len(blocks)} layers (0..{len(blocks) - 1})")
    return cast(Block, blocks[layer])  # encoder_blocks returns only lists whose items are all Blocks


def _keep_index(keep: Sequence[int] | torch.Tensor, size: int, what: str) -> torch.Tensor:
    """Sorted, unique, in-range indices as a long tensor; at least one must stay."""
    idx = torch.as_tensor(keep, dtype=torch.long).flatten().unique(sorted=True)
    if not len(idx):
        raise EncoderforgeError(f"cannot remove every {what}: keep at least one (or remove the whole layer)")
    if idx[0] < 0 or idx[-1] >= size:
        raise EncoderforgeError(f"{what} indices must be in 0..{size - 1}, got {idx.tolist()}")
    return idx


def _take(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the kept output rows / input columns of `linear` (bias follows the rows)."""
    w = linear.weight.detach()  # (out, in)
    w = w if rows is None else w[rows.to(w.device)]
    w = w if cols is None else w[:, cols.to(w.device)]
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if linear.bias is not None:
            b = linear.bias.detach()
            out.bias.copy_(b if rows is None else b[rows.to(b.device)])
    for new, old in ((out.weight, linear.weight), (out.bias, linear.bias)):
        if new is not None:
            new.requires_grad_(old.requires_grad)  # a frozen (e.g. LoRA-base) weight stays frozen
    return out.train(linear.training)


def shrink_mlp(mlp: MLP, keep: Sequence[int] | torch.Tensor) -> int:
    """Keep only the FFN neurons `keep` of `mlp` (in place): fc1 rows, fc2 columns. Returns how many were removed.

    For GeGLU, neuron j is the pair (value row j, gate row I + j) of fc1, so both halves shrink together."""
    width = mlp.fc2.in_features  # I
    idx = _keep_index(keep, width, "FFN neuron")
    rows = torch.cat((idx, idx + width)) if mlp.gated else idx  # fc1: (2I, C) = [value; gate] for GeGLU
    mlp.fc1, mlp.fc2 = _take(mlp.fc1, rows=rows), _take(mlp.fc2, cols=idx)  # (I', C) / (2I', C) and (C, I')
    return width - len(idx)


def shrink_attention(attn: Attention, keep_heads: Sequence[int] | torch.Tensor) -> int:
    """Keep only the heads `keep_heads` of `attn` (in place); head_dim and the hidden size C stay. Returns how many
    heads were removed.

    The fused qkv rows are laid out (3, H, D) (see Attention.forward's view), the output projection's columns (H, D)."""
    H, D = attn.num_heads, attn.head_dim
    heads = _keep_index(keep_heads, H, "attention head")
    dims = (heads[:, None] * D + torch.arange(D)).flatten()  # (H' * D,) rows of one of q, k, v
    qkv_rows = torch.cat([part * H * D + dims for part in range(3)])  # (3 * H' * D,)
    attn.qkv = _take(attn.qkv, rows=qkv_rows)  # (3 H' D, C)
    attn.out = _take(attn.out, cols=dims)  # (C, H' D)
    attn.num_heads = len(heads)
    return H - len(heads)


def prune_ffn_neurons(model: nn.Module, layer: int, keep_idx: Sequence[int] | torch.Tensor) -> int:
    """Remove the FFN neurons of encoder layer `layer` that are not in `keep_idx`; returns how many were removed.

    Args:
        model: an Encoder or a model holding one; modified in place (the Encoder gets a config with the new width).
        layer: block index (negative counts from the end).
        keep_idx: neuron indices in [0, intermediate_size) to keep.
    Example:
        >>> prune_ffn_neurons(enc, 0, scores[0].topk(768).indices)
    """
    blocks = encoder_blocks(model)
    mlp = _block(model, layer).mlp
    removed = shrink_mlp(mlp, keep_idx)
    _update_config(_owner(model, blocks), len(blocks), layer=layer % len(blocks), ffn=mlp.fc2.in_features)
    return removed


def prune_heads(model: nn.Module, layer: int, keep_heads: Sequence[int] | torch.Tensor) -> int:
    """Remove the attention heads of encoder layer `layer` that are not in `keep_heads`; returns how many.

    Args:
        model: an Encoder or a model holding one; modified in place (the Encoder gets a config with the new width).
        layer: block index (negative counts from the end).
        keep_heads: head indices in [0, num_heads) to keep.
    """
    blocks = encoder_blocks(model)
    attn = _block(model, layer).attn
    removed = shrink_attention(attn, keep_heads)
    _update_config(_owner(model, blocks), len(blocks), layer=layer % len(blocks), heads=attn.num_heads)
    return removed


def remove_layers(model: nn.Module, keep_layers: Sequence[int]) -> int:
    """Keep only the encoder blocks `keep_layers` (in their original order); returns how many were removed.

    An Encoder's config gets the new `num_layers` and the kept layers' widths, so the result saves and loads as an
    ordinary checkpoint."""
    blocks = encoder_blocks(model)
    idx = _keep_index(list(keep_layers), len(blocks), "encoder layer").tolist()
    owner = _owner(model, blocks)
    kept = nn.ModuleList(blocks[i] for i in idx)
    for name, child in owner.named_children():
        if child is blocks:
            setattr(owner, name, kept)
    _update_config(owner, len(blocks), keep=idx)
    return len(blocks) - len(idx)


def _owner(model: nn.Module, blocks: nn.ModuleList) -> nn.Module:
    """The module that holds the block list as a child (the Encoder)."""
    return next(m for m in model.modules() if any(c is blocks for c in m.children()))


def _update_config(
    owner: nn.Module,
    n_blocks: int,
    *,
    layer: int = 0,
    heads: int | None = None,
    ffn: int | None = None,
    keep: list[int] | None = None,
) -> None:
    """Give `owner` (the Encoder holding `n_blocks` blocks) a new config: layer `layer` now has `heads` heads / `ffn`
    neurons, or only the layers `keep` remain. The config's own widths are edited rather than read back from the
    modules: an fc2 wrapped by LoRA or int8 need not expose its width."""
    cfg = getattr(owner, "cfg", None)
    if not isinstance(cfg, EncoderConfig) or cfg.num_layers != n_blocks:
        return
    hs = [cfg.heads_of(i) for i in range(n_blocks)]
    fs = [cfg.ffn_of(i) for i in range(n_blocks)]
    hs[layer] = hs[layer] if heads is None else heads
    fs[layer] = fs[layer] if ffn is None else ffn
    if keep is not None:
        hs, fs = [hs[i] for i in keep], [fs[i] for i in keep]
    # setattr: nn.Module's __setattr__ is typed for tensors and modules only (a config is a plain attribute)
    setattr(owner, "cfg", cfg.with_layer_widths(hs, fs))
