"""Unstructured and 4-block weight pruning of the encoder blocks' linear weights: a gradual cubic schedule run from
the training loop's `after_step`, one-shot pruning, and a sparsity report.

Why our own: sparse models are a product feature (oBERT: 10x smaller on disk, several times faster on sparse CPU
runtimes), and SparseML, which held the reference pruning modifiers, is end-of-life. The loop stays plain: a
Sparsifier is just the callable it runs after each optimizer step.

Masks live in the weights. A pruned weight is exactly 0; the Sparsifier re-zeroes the pruned positions after every
optimizer step (AdamW's moments would otherwise move them) and recomputes masks at the schedule's pruning steps,
cumulatively (pruned once, pruned for good). On resume the masks are read back from the loaded weights (the
checkpoint was written after the masks were applied), through a load_state_dict hook, so a checkpoint needs no
extra state and a resumed run continues exactly as an uninterrupted one (tests/compression/test_sparsity.py).

Shape legend: (out, in) a linear weight, G the pruning block (1, or 4 consecutive weights along `in`).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.distributed as tdist
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.compression.obert import LossBatches, fisher_inverse, obert_scores, obert_update
from encoderforge.model.surgery import encoder_blocks

Scorer = Literal["magnitude", "obert"]
Scope = Literal["global", "per-tensor"]
SCORERS, SCOPES = ("magnitude", "obert"), ("global", "per-tensor")


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The encoder blocks' linear weights (attn.qkv, attn.out, mlp.fc1, mlp.fc2) by their names in `model`.
    Embeddings, norms, the pooler and task heads are not pruned (oBERT prunes the encoder's linear layers)."""
    ids = {id(p) for block in encoder_blocks(model) for n, p in block.named_parameters() if n.endswith("weight") and p.ndim == 2}
    return {n: p for n, p in model.named_parameters() if id(p) in ids}


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise EncoderforgeError(f"{name}={value} must be in [0, 1): the fraction of prunable weights set to zero, e.g. 0.8")


def cubic_sparsity(step: int, *, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """The gradual pruning schedule of Zhu & Gupta 2017, "To prune, or not to prune":
    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t0 <= t <= t0 + n dt = end; 0 before start, s_f after end.
    Prunes fast while many redundant weights remain, slowly near the end.

    Args:
        step: optimizer steps done.
        start, end: t0 and t0 + n dt, in optimizer steps (start < end).
        final: s_f in [0, 1).
        initial: s_i in [0, final], the sparsity reached at `start`.
    Example:
        >>> cubic_sparsity(30, start=10, end=50, final=0.8)   # 0.8 - 0.8 * 0.5 ** 3 = 0.7
    """
    _check_schedule(start, end, final, initial)
    if step < start:
        return 0.0
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def _check_schedule(start: int, end: int, final: float, initial: float) -> None:
    if start < 0 or start >= end:
        raise EncoderforgeError(f"start={start}, end={end}: pruning needs 0 <= start < end (in optimizer steps)")
    _check_fraction("final", final)
    if not 0.0 <= initial <= final:
        raise EncoderforgeError(f"initial={initial} must be in [0, final={final}]: the sparsity reached at the start step")


def _check_options(model: nn.Module, scorer: str, block: int, scope: str, has_fisher: bool) -> None:
    if scorer not in SCORERS:
        raise EncoderforgeError(f"scorer={scorer!r}; use one of {list(SCORERS)}")
    if scope not in SCOPES:
        raise EncoderforgeError(f"scope={scope!r}; use one of {list(SCOPES)}")
    if scorer == "obert" and not has_fisher:
        raise EncoderforgeError(
            "scorer='obert' needs gradients: pass fisher= (e.g. obert.task_losses(model, task, num_grads=64))"
        )
    if block < 1:
        raise EncoderforgeError(f"block={block}: use 1 (unstructured) or 4 (4-blocks along the input dim)")
    for name, w in prunable_weights(model).items():
        if w.shape[1] % block:
            raise EncoderforgeError(f"block={block} does not divide the input dim {w.shape[1]} of {name}; use block=1 or 4")


def _groups(pruned: torch.Tensor, block: int) -> torch.Tensor:
    """(out, in) bool -> (out, in / G): a block counts as pruned when all its weights are."""
    return pruned.view(pruned.shape[0], -1, block).all(-1)


def _expand(groups: torch.Tensor, block: int) -> torch.Tensor:
    """(out, in / G) -> (out, in)."""
    return groups.repeat_interleave(block, dim=1)


def _select(scores: dict[str, torch.Tensor], old: dict[str, torch.Tensor], target: float, scope: str) -> dict[str, torch.Tensor]:
    """Block masks with round(target x blocks) pruned (globally or per tensor): the earlier ones, then the lowest
    scores. A stable sort makes ties (and so every rank's choice) deterministic."""
    parts = [scores] if scope == "global" else [{k: v} for k, v in scores.items()]
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        flat = torch.cat([s.float().masked_fill(old[k], float("-inf")).flatten() for k, s in part.items()])
        k_prune = max(round(target * flat.numel()), int(torch.isinf(flat).sum()))  # never unprune
        chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        chosen[torch.argsort(flat, stable=True)[:k_prune]] = True
        i = 0
        for k, s in part.items():
            out[k] = chosen[i : i + s.numel()].view(s.shape)
            i += s.numel()
    return out


@torch.no_grad()
def _prune(
    model: nn.Module,
    target: float,
    old: dict[str, torch.Tensor],
    *,
    scorer: str,
    block: int,
    scope: str,
    fisher: LossBatches | None,
    fisher_block: int | None,
    damp: float,
    update: bool,
) -> dict[str, torch.Tensor]:
    """Prune to `target` (keeping `old`, (out, in) bool masks), zero the weights; returns the new (out, in) masks."""
    weights = prunable_weights(model)
    old_groups = {k: _groups(old[k].to(w.device), block) for k, w in weights.items()}
    finv = None
    if scorer == "obert":
        assert fisher is not None  # _check_options
        training = model.training
        model.eval()  # gradients without dropout noise
        try:
            finv = fisher_inverse(weights, fisher, fisher_block=fisher_block, damp=damp, block=block)
        finally:
            model.train(training)
        scores = obert_scores(weights, finv, block=block)
    else:
        scores = {k: (w.detach().float().view(w.shape[0], -1, block) ** 2).sum(-1) for k, w in weights.items()}
    masks = {k: _expand(g, block) for k, g in _select(scores, old_groups, target, scope).items()}
    if finv is not None and update:
        obert_update(weights, finv, masks)
    for k, w in weights.items():
        w.masked_fill_(masks[k], 0.0)
    if finv is not None and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        for w in weights.values():  # each rank saw its own gradients: rank 0's pruned weights win
            tdist.broadcast(w.data, src=0)
        masks = {k: _expand(_groups(w == 0, block), block) for k, w in weights.items()}
    return masks


def prune_once(
    model: nn.Module,
    sparsity: float,
    *,
    scorer: Scorer = "magnitude",
    block: int = 1,
    scope: Scope = "global",
    fisher: LossBatches | None = None,
    fisher_block: int | None = None,
    damp: float = 1e-7,
    update: bool = True,
) -> dict[str, Any]:
    """One-shot pruning of `model`'s prunable weights to `sparsity` (weights already exactly 0 stay pruned).

    Args:
        model: an Encoder or a model holding one; modified in place.
        sparsity: the fraction of prunable weights to zero, in [0, 1).
        scorer: "magnitude" (smallest |w|; a block's sum of w^2) or "obert" (compression/obert.py).
        block: 1 (unstructured) or 4 (4 consecutive weights along the input dim, pruned together).
        scope: "global" (rank all prunable blocks together, oBERT's choice) or "per-tensor" (each tensor to `sparsity`).
        fisher: for "obert": callables each returning a mini-batch loss (e.g. `obert.task_losses(model, task, ...)(0)`).
        fisher_block: oBERT's Fisher block size B (None: 50, or 48 with 4-blocks).
        damp: oBERT's Fisher dampening lambda.
        update: for "obert", also apply the optimal update to the remaining weights.
    Returns:
        `sparsity_report(model)` after pruning.
    Example:
        >>> prune_once(encoder, 0.8, scorer="obert", block=4, fisher=task_losses(model, task, num_grads=64)(0))
    """
    _check_fraction("sparsity", sparsity)
    _check_options(model, scorer, block, scope, fisher is not None)
    old = {k: w == 0 for k, w in prunable_weights(model).items()}
    _prune(
        model,
        sparsity,
        old,
        scorer=scorer,
        block=block,
        scope=scope,
        fisher=fisher,
        fisher_block=fisher_block,
        damp=damp,
        update=update,
    )
    return sparsity_report(model)


class Sparsifier:
    """Gradual pruning as the training loop's `after_step`: `train(..., after_step=Sparsifier(model, ...))`.

    At every call it re-zeroes the pruned weights; at the pruning steps (start, start + prune_every, ..., and end) it
    prunes further, to `cubic_sparsity(step)`. Masks are read from the weights (exact zeros) when it is built and
    whenever the model's state is loaded (a resumed run), so checkpoints need nothing else.

    Args:
        model: the unwrapped model the loop trains (an Encoder or a model holding one).
        final: the sparsity reached at `end`, in [0, 1).
        start, end: the first and last pruning step (optimizer steps done; start < end).
        prune_every: steps between pruning steps (the paper's dt).
        initial: the sparsity pruned to at `start`.
        scorer, block, scope, fisher_block, damp, update: as in `prune_once`.
        fisher: for "obert": step -> loss callables (`obert.task_losses(model, task, num_grads=m)`); it must be a
            pure function of the step for a resumed run to prune exactly as an uninterrupted one.
    Example:
        >>> sp = Sparsifier(model, final=0.8, start=100, end=2000, prune_every=100)
        >>> train(model, task, args, dist, after_step=sp); sparsity_report(model)["sparsity"]   # 0.8
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        final: float,
        start: int,
        end: int,
        prune_every: int = 1,
        initial: float = 0.0,
        scorer: Scorer = "magnitude",
        block: int = 1,
        scope: Scope = "global",
        fisher: Callable[[int], LossBatches] | None = None,
        fisher_block: int | None = None,
        damp: float = 1e-7,
        update: bool = True,
    ):
        _check_schedule(start, end, final, initial)
        if prune_every < 1:
            raise EncoderforgeError(f"prune_every={prune_every}: use a positive number of optimizer steps between pruning steps")
        _check_options(model, scorer, block, scope, fisher is not None)
        self.model, self.final, self.start, self.end, self.initial = model, final, start, end, initial
        self.prune_every, self.scorer, self.block, self.scope = prune_every, scorer, block, scope
        self.fisher, self.fisher_block, self.damp, self.update = fisher, fisher_block, damp, update
        self.pruned: dict[str, torch.Tensor] = {}  # name -> (out, in) bool, True = pruned
        self.read_masks()
        self._hook = model.register_load_state_dict_post_hook(lambda module, keys: self.read_masks())

    def read_masks(self) -> None:
        """Take the masks from the weights: a weight exactly 0 is pruned (for blocks: all of its weights)."""
        with torch.no_grad():
            self.pruned = {k: _expand(_groups(w == 0, self.block), self.block) for k, w in prunable_weights(self.model).items()}

    def target(self, step: int) -> float | None:
        """The sparsity to prune to after `step` optimizer steps, or None when `step` is not a pruning step."""
        on_grid = (step - self.start) % self.prune_every == 0 or step == self.end
        if not (self.start <= step <= self.end and on_grid):
            return None
        return cubic_sparsity(step, start=self.start, end=self.end, final=self.final, initial=self.initial)

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        weights = prunable_weights(self.model)
        for k, w in weights.items():
            mask = self.pruned[k]
            if mask.shape != w.shape:
                raise EncoderforgeError(
                    f"{k} changed shape {tuple(mask.shape)} -> {tuple(w.shape)}; prune after surgery, not during"
                )
            if mask.device != w.device:
                self.pruned[k] = mask = mask.to(w.device)
            w.masked_fill_(mask, 0.0)
        target = self.target(step)
        if target is None:
            return
        self.pruned = _prune(
            self.model,
            target,
            self.pruned,
            scorer=self.scorer,
            block=self.block,
            scope=self.scope,
            fisher=None if self.fisher is None else self.fisher(step),
            fisher_block=self.fisher_block,
            damp=self.damp,
            update=self.update,
        )

    def close(self) -> None:
        """Stop following the model's state loads."""
        self._hook.remove()


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Zeros among the prunable weights: {"nonzero", "total", "sparsity", "per_tensor": {name: same three}}."""
    per: dict[str, dict[str, Any]] = {}
    for k, w in prunable_weights(model).items():
        nz = int(torch.count_nonzero(w))
        per[k] = {"nonzero": nz, "total": w.numel(), "sparsity": 1.0 - nz / w.numel()}
    nonzero, total = sum(v["nonzero"] for v in per.values()), sum(v["total"] for v in per.values())
    return {"nonzero": nonzero, "total": total, "sparsity": 1.0 - nonzero / max(total, 1), "per_tensor": per}
