"""Structured pruning: score attention heads, FFN neurons and layers on data, then remove the least important ones
through model/surgery.py, so the model really gets smaller and faster (ZipLM, Kurtic et al. 2023), not just sparse.

A mask variable of ones multiplies each head's output and each FFN neuron's activation; the loss's gradient with
respect to it, g = dL/dm (summed over a batch's tokens by the chain rule), says how the loss moves when that part
is scaled away. Two scores, both summed over the batches the caller gives:
- "taylor": |g|, the first-order Taylor estimate of the loss change (Michel et al. 2019, "Are Sixteen Heads Really
  Better than One?"; Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning");
- "fisher": g^2, the empirical Fisher diagonal of the masks (Kwon et al. 2022, "A Fast Post-Training Pruning
  Framework for Transformers"); exactly theirs when each batch holds one example, coarser with bigger batches.
The masks are forward pre-hooks on `attn.out` (its input (..., H * D) is the concatenated head outputs) and on
`mlp.fc2` (its input (..., I) is the activations), so no model code knows about them (`masked`).

Shape legend: L layers, H_l heads of layer l, D head dim, I_l FFN neurons of layer l.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Literal, Sequence, cast

import torch
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.layers import Block
from encoderforge.model.surgery import encoder_blocks, prune_ffn_neurons, prune_heads, remove_layers

Method = Literal["taylor", "fisher"]
Scope = Literal["global", "per_layer"]
Parts = Literal["both", "heads", "ffn"]
LossFn = Callable[[], torch.Tensor]  # computes a scalar loss on one batch with the model
_PARTS = {"both": "heads and FFN neurons", "heads": "heads", "ffn": "FFN neurons"}


@dataclass
class Importance:
    """Per-part scores of an encoder (higher = more important); valid for the model shape they were computed on."""

    heads: list[torch.Tensor]  # per layer: (H_l,)
    neurons: list[torch.Tensor]  # per layer: (I_l,)
    method: str = "taylor"
    batches: int = 0

    def layer_scores(self) -> torch.Tensor:
        """(L,) layer scores: the layer's share of all head scores plus its share of all neuron scores, so heads and
        neurons weigh alike and layers compare across the model (a layer whose parts the loss hardly feels is the
        cheapest to drop)."""
        h = torch.stack([s.sum() for s in self.heads])  # (L,)
        n = torch.stack([s.sum() for s in self.neurons])  # (L,)
        return h / h.sum().clamp_min(1e-30) + n / n.sum().clamp_min(1e-30)


@dataclass
class PruneSummary:
    """What `prune_structured` / `prune_to_latency` kept. Indices are those of the model before pruning."""

    layers: list[int]  # the kept layers
    heads: list[list[int]]  # per kept layer: its kept heads
    neurons: list[list[int]]  # per kept layer: its kept FFN neurons
    params_before: int
    params_after: int
    fraction: float | None = None  # prune_to_latency: the fraction of heads / neurons removed
    latency_ms: float | None = None  # prune_to_latency: measure(model) after pruning

    @property
    def heads_per_layer(self) -> list[int]:
        return [len(k) for k in self.heads]

    @property
    def neurons_per_layer(self) -> list[int]:
        return [len(k) for k in self.neurons]


@contextmanager
def masked(model: nn.Module, heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor]) -> Iterator[None]:
    """Run `model` with its head outputs and FFN activations multiplied by masks (hooks removed on exit).

    Args:
        model: an Encoder or a model holding one.
        heads: per layer, a (H_l,) mask; a head with mask 0 contributes nothing to attn.out.
        neurons: per layer, a (I_l,) mask over the FFN activations (mlp.fc2's input).
    Example:
        >>> with torch.no_grad(), masked(enc, [torch.ones(12)] * 6, keep):   # the dense model, pruned by masks
        ...     hidden = enc(ids, mask)
    """
    blocks = [cast(Block, b) for b in encoder_blocks(model)]
    _check_shapes(blocks, heads, neurons, "masks")
    handles = []
    try:
        for block, h, n in zip(blocks, heads, neurons):
            handles.append(block.attn.out.register_forward_pre_hook(_scale_heads(h)))
            handles.append(block.mlp.fc2.register_forward_pre_hook(_scale_neurons(n)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _scale_heads(mask: torch.Tensor) -> Callable[[nn.Module, tuple], tuple]:
    def hook(_: nn.Module, args: tuple) -> tuple:
        x = args[0]  # (*lead, H * D)
        heads = x.unflatten(-1, (len(mask), -1))  # (*lead, H, D)
        return ((heads * mask.to(x.dtype)[:, None]).flatten(-2), *args[1:])  # (*lead, H * D)

    return hook


def _scale_neurons(mask: torch.Tensor) -> Callable[[nn.Module, tuple], tuple]:
    def hook(_: nn.Module, args: tuple) -> tuple:
        return (args[0] * mask.to(args[0].dtype), *args[1:])  # (*lead, I)

    return hook


def importance(model: nn.Module, loss_batches: Iterable[LossFn], *, method: Method = "taylor") -> Importance:
    """Score every attention head and FFN neuron of `model` by the loss's gradient with respect to its mask.

    The model runs in eval mode (no dropout noise in the scores; its mode is restored) and no parameter gradient
    is touched: only the masks' gradients are computed.

    Args:
        model: an Encoder or a task model holding one.
        loss_batches: callables, each computing a scalar loss on one batch with `model`, e.g.
            `[lambda b=b: task.loss(model, b).total for b in batches]`.
        method: "taylor" (sum of |dL/dm|) or "fisher" (sum of (dL/dm)^2); see the module docstring.
    Returns:
        Importance with (H_l,) head and (I_l,) neuron scores per layer.
    Example:
        >>> imp = importance(model, [lambda b=b: task.loss(model, b).total for b in batches[:32]], method="fisher")
        >>> prune_structured(model, imp, heads=0.3, ffn=0.4)
    """
    if method not in ("taylor", "fisher"):
        raise EncoderforgeError(f"importance: method={method!r} is not supported; use one of ['taylor', 'fisher']")
    blocks = [cast(Block, b) for b in encoder_blocks(model)]
    device = next(model.parameters()).device
    heads = [torch.ones(b.attn.num_heads, device=device, requires_grad=True) for b in blocks]
    neurons = [torch.ones(b.mlp.fc2.in_features, device=device, requires_grad=True) for b in blocks]
    masks = heads + neurons
    totals = [torch.zeros_like(m) for m in masks]
    training, n = model.training, 0
    model.eval()
    try:
        with masked(model, heads, neurons), torch.enable_grad():
            for n, fn in enumerate(loss_batches, start=1):
                loss = fn()
                _check_loss(loss, n - 1)
                for total, g in zip(totals, torch.autograd.grad(loss, masks, allow_unused=True)):
                    if g is not None:  # a part the loss never reaches (e.g. rows the caller does not read) scores 0
                        total += g.detach().abs() if method == "taylor" else g.detach().square()
    finally:
        model.train(training)
    if n == 0:
        raise EncoderforgeError("importance: loss_batches is empty; pass at least one callable that returns a loss")
    return Importance(heads=totals[: len(blocks)], neurons=totals[len(blocks) :], method=method, batches=n)


def _check_loss(loss: object, i: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise EncoderforgeError(f"importance: loss_batches[{i}] returned {what}; each callable must return a scalar loss")
    if not loss.requires_grad:
        raise EncoderforgeError(
            f"importance: loss_batches[{i}] returned a loss that does not depend on the model; compute it with the "
            "model passed to importance(), outside torch.no_grad()"
        )


def prune_structured(
    model: nn.Module,
    imp: Importance,
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    layers: int = 0,
    scope: Scope = "global",
) -> PruneSummary:
    """Remove the least important layers, attention heads and FFN neurons of `model` in place (model/surgery.py).

    First the `layers` lowest `imp.layer_scores()` layers go; then, over the remaining layers, the `heads` and `ffn`
    fractions of their heads and neurons. "global" ranks all layers' parts together, each layer's scores divided by
    their L2 norm so layers compare (Michel et al. 2019, section 4.2), and never takes a layer's last head or neuron;
    "per_layer" removes the fraction from every layer. Everything is checked before anything is removed.

    Args:
        model: an Encoder or a model holding one; its encoder's config follows (per-layer widths).
        imp: scores from `importance` on this model's current shape (recompute them after each pruning).
        heads, ffn: fractions in [0, 1) of the heads / FFN neurons to remove (rounded to whole parts).
        layers: how many whole layers to remove (at least one stays).
        scope: "global" or "per_layer" (see above).
    Returns:
        PruneSummary: kept layers, heads and neurons (original indices), parameters before and after.
    Example:
        >>> s = prune_structured(enc, importance(enc, fns), heads=0.3, ffn=0.5)
        >>> s.heads_per_layer, s.params_after / s.params_before
    """
    blocks = [cast(Block, b) for b in encoder_blocks(model)]
    _check_shapes(blocks, imp.heads, imp.neurons, "importance")
    for name, f in (("heads", heads), ("ffn", ffn)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise EncoderforgeError(f"prune_structured: {name}={f!r} must be a fraction in [0, 1) of the {name} to remove")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers < len(blocks):
        raise EncoderforgeError(
            f"prune_structured: layers={layers!r} must be an integer in 0..{len(blocks) - 1} (the encoder has {len(blocks)} "
            "layers and keeps at least one)"
        )
    if scope not in ("global", "per_layer"):
        raise EncoderforgeError(f"prune_structured: scope={scope!r} is not supported; use one of ['global', 'per_layer']")
    before = sum(p.numel() for p in model.parameters())
    dropped = set(imp.layer_scores().argsort(stable=True)[:layers].tolist())
    alive = [i for i in range(len(blocks)) if i not in dropped]
    keep_heads = _plan(imp.heads, alive, heads, scope, "heads")
    keep_neurons = _plan(imp.neurons, alive, ffn, scope, "ffn")
    for i, kh, kn in zip(alive, keep_heads, keep_neurons):  # all checked: now change the model
        if len(kh) < len(imp.heads[i]):
            prune_heads(model, i, kh)
        if len(kn) < len(imp.neurons[i]):
            prune_ffn_neurons(model, i, kn)
    if dropped:
        remove_layers(model, alive)
    after = sum(p.numel() for p in model.parameters())
    return PruneSummary(layers=alive, heads=keep_heads, neurons=keep_neurons, params_before=before, params_after=after)


def _plan(scores: list[torch.Tensor], alive: list[int], fraction: float, scope: str, name: str) -> list[list[int]]:
    """Per layer in `alive`: the sorted indices kept after removing `fraction` of the parts (lowest scores first)."""
    part = "heads" if name == "heads" else "FFN neurons"
    sizes = [len(scores[i]) for i in alive]
    if scope == "per_layer":
        drops = [round(fraction * s) for s in sizes]
        for i, size, d in zip(alive, sizes, drops):
            if d >= size:
                raise EncoderforgeError(
                    f"prune_structured: {name}={fraction} would remove all {size} {part} of layer {i}; lower {name}, "
                    "use scope='global' or remove the layer (layers=...)"
                )
        order = [scores[i].argsort(stable=True)[:d].tolist() for i, d in zip(alive, drops)]
        return [sorted(set(range(size)) - set(o)) for size, o in zip(sizes, order)]
    total, limit = sum(sizes), sum(sizes) - len(alive)
    n = round(fraction * total)
    if n > limit:
        raise EncoderforgeError(
            f"prune_structured: {name}={fraction} asks to remove {n} of {total} {part}, but every layer keeps at least "
            f"one: at most {limit} ({limit / total:.3f}); lower {name} or remove whole layers (layers=...)"
        )
    flat = torch.cat([scores[i] / scores[i].norm().clamp_min(1e-30) for i in alive])  # per-layer L2-normalised
    where = [(j, k) for j, size in enumerate(sizes) for k in range(size)]  # flat position -> (alive layer, index)
    left, drop = list(sizes), [set[int]() for _ in alive]
    for pos in flat.argsort(stable=True).tolist():
        if n == 0:
            break
        j, k = where[pos]
        if left[j] > 1:  # never a layer's last part
            left[j] -= 1
            drop[j].add(k)
            n -= 1
    return [sorted(set(range(size)) - d) for size, d in zip(sizes, drop)]


def prune_to_latency(
    model: nn.Module,
    imp: Importance,
    target_ms: float,
    measure: Callable[[nn.Module], float],
    *,
    step: float = 0.1,
    max_fraction: float = 0.9,
    parts: Parts = "both",
    scope: Scope = "global",
) -> PruneSummary:
    """Prune the smallest fraction of heads and FFN neurons that makes `measure(model) <= target_ms` (ZipLM's
    latency target, Kurtic et al. 2023, searched in fraction steps instead of per-part latency tables).

    Each candidate fraction step, 2 * step, ... up to max_fraction is tried on a copy; the first that meets the target
    is then applied to `model` in place. If none does, `model` is left unchanged and the error names the best
    latency reached.

    Args:
        model: an Encoder or a model holding one.
        imp: scores from `importance` on this model.
        target_ms: the latency to reach, in the unit `measure` returns.
        measure: model -> latency in ms (the caller's benchmark: its batch shape, threads and warm-up).
        step, max_fraction: the search grid, 0 < step <= max_fraction < 1.
        parts: prune "both" heads and FFN neurons by the fraction, or only "heads" or "ffn".
        scope: as in `prune_structured`.
    Returns:
        PruneSummary with `fraction` and `latency_ms` set (fraction 0.0 when the model already meets the target).
    """
    if not target_ms > 0:
        raise EncoderforgeError(f"prune_to_latency: target_ms={target_ms} must be positive")
    if not 0 < step <= max_fraction < 1:
        raise EncoderforgeError(
            f"prune_to_latency: step={step}, max_fraction={max_fraction} must satisfy 0 < step <= max_fraction < 1"
        )
    if parts not in ("both", "heads", "ffn"):
        raise EncoderforgeError(f"prune_to_latency: parts={parts!r} is not supported; use one of ['both', 'heads', 'ffn']")
    best = measure(model)
    if best <= target_ms:
        summary = prune_structured(model, imp)  # removes nothing; the summary lists the model as it is
        return replace(summary, fraction=0.0, latency_ms=best)
    k = int(max_fraction / step + 1e-9)
    grid = [round(i * step, 6) for i in range(1, k + 1)]
    grid += [max_fraction] if grid[-1] < max_fraction - 1e-9 else []
    tried = 0.0
    for f in grid:
        h, n = (f if parts != "ffn" else 0.0), (f if parts != "heads" else 0.0)
        trial = copy.deepcopy(model)
        try:
            prune_structured(trial, imp, heads=h, ffn=n, scope=scope)
        except EncoderforgeError:
            break  # no more to remove: every layer is down to one head / neuron
        ms, tried = measure(trial), f
        best = min(best, ms)
        if ms <= target_ms:
            summary = prune_structured(model, imp, heads=h, ffn=n, scope=scope)
            return replace(summary, fraction=f, latency_ms=ms)
    raise EncoderforgeError(
        f"prune_to_latency: the best latency reached is {best:.2f} ms (removing up to {tried:.0%} of the {_PARTS[parts]}) > "
        f"target_ms={target_ms}; raise target_ms or max_fraction, or remove layers first; the model is unchanged"
    )


def _check_shapes(blocks: list[Block], heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor], what: str) -> None:
    """One (H_l,) and one (I_l,) entry per layer, matching the model as it is now."""
    want_h = [b.attn.num_heads for b in blocks]
    want_n = [b.mlp.fc2.in_features for b in blocks]
    got_h, got_n = [len(h) for h in heads], [len(n) for n in neurons]
    if got_h != want_h or got_n != want_n:
        raise EncoderforgeError(
            f"{what} are for heads {got_h} / FFN widths {got_n} per layer but the model has {want_h} / {want_n}; "
            + ("recompute importance(model, ...) after each pruning" if what == "importance" else "give one mask per layer")
        )
